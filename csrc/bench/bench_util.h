// Shared plumbing of the native micro-benchmarks: timing helpers, run
// metadata, command-line options and the table / JSON output, so that every
// benchmark reports in the same format.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace aiarch {
namespace bench {

using Clock = std::chrono::steady_clock;

// Keeps the optimiser from discarding a computed value.
template <typename T>
inline void KeepAlive(const T& v) {
  asm volatile("" : : "g"(v) : "memory");
}

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

inline std::string Commit() {
  std::string out;
  if (FILE* p = popen("git rev-parse --short HEAD 2>/dev/null", "r")) {
    char buf[64];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

struct Options {
  bool smoke = false;     // a run of about a second, to check the binary works
  std::string json_path;  // where to write the JSON report; empty = none
};

// Parses [--smoke] [--json PATH]; returns false (after printing usage) on anything else.
inline bool ParseOptions(int argc, char** argv, Options* opt) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      opt->smoke = true;
    } else if (a == "--json" && i + 1 < argc) {
      opt->json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--smoke] [--json PATH]\n", argv[0]);
      return false;
    }
  }
  return true;
}

struct Row {
  std::string name;
  double value;
  std::string unit;
  std::string target;  // the figure to beat, or empty
};

inline void PrintTable(const std::vector<Row>& rows) {
  std::printf("%-44s %14s  %-8s %s\n", "metric", "value", "unit", "target");
  std::printf("%-44s %14s  %-8s %s\n", std::string(44, '-').c_str(), "--------------", "--------",
              "------");
  for (const Row& r : rows) {
    std::printf("%-44s %14.6g  %-8s %s\n", r.name.c_str(), r.value, r.unit.c_str(),
                r.target.c_str());
  }
}

// Writes {"benchmark", "smoke", compiler, cpu, threads, commit, "results"}.
// Returns false (after printing why) when the file cannot be written.
inline bool WriteJson(const Options& opt, const std::string& benchmark,
                      const std::vector<Row>& rows) {
  if (opt.json_path.empty()) return true;
  std::ofstream out(opt.json_path);
  out.precision(9);
  out << "{\n  \"benchmark\": \"" << benchmark
      << "\",\n  \"smoke\": " << (opt.smoke ? "true" : "false") << ",\n  \"compiler\": \""
      << __VERSION__ << "\",\n  \"cpu\": \"" << CpuModel()
      << "\",\n  \"hardware_threads\": " << std::thread::hardware_concurrency()
      << ",\n  \"commit\": \"" << Commit() << "\",\n  \"results\": {\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    out << "    \"" << rows[i].name << "\": {\"value\": " << rows[i].value << ", \"unit\": \""
        << rows[i].unit << "\"}" << (i + 1 < rows.size() ? ",\n" : "\n");
  }
  out << "  }\n}\n";
  if (!out) std::fprintf(stderr, "cannot write %s\n", opt.json_path.c_str());
  return static_cast<bool>(out);
}

}  // namespace bench
}  // namespace aiarch
