// HTTP/1.1 request parser: golden requests split at every byte position,
// pipelining, chunked bodies, keep-alive rules, limits and malformed input.
#include <string>
#include <vector>

#include "aiarch/http_parser.h"
#include "check.h"

namespace aiarch {
namespace {

struct Parsed {
  std::string method, target, path, query, body;
  bool keep_alive = true;
  std::vector<std::pair<std::string, std::string>> headers;
};

struct Outcome {
  std::vector<Parsed> requests;
  int error = 0;
  std::string message;
  int continues = 0;
};

// Feeds `wire` in pieces cut at `cuts` (sorted offsets) and collects what the
// parser returns.
Outcome Run(const std::string& wire, const std::vector<size_t>& cuts,
            HttpParserLimits limits = {}) {
  HttpRequestParser parser(limits);
  Outcome out;
  size_t from = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(wire.size());
  for (size_t end : ends) {
    parser.Feed(wire.data() + from, end - from);
    from = end;
    HttpRequest req;
    while (true) {
      auto r = parser.Next(&req);
      if (r == HttpRequestParser::Result::kNeedMore) {
        if (parser.TakeContinue()) ++out.continues;
        break;
      }
      if (r == HttpRequestParser::Result::kError) {
        out.error = parser.error_status();
        out.message = parser.error_message();
        return out;
      }
      Parsed p;
      p.method = std::string(req.method);
      p.target = std::string(req.target);
      p.path = std::string(req.path);
      p.query = std::string(req.query);
      p.body = std::string(req.body);
      p.keep_alive = req.keep_alive;
      for (const auto& h : req.headers) p.headers.emplace_back(h.name, h.value);
      out.requests.push_back(std::move(p));
    }
  }
  return out;
}

const std::string kPipelined =
    "POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
    "Inference-Header-Content-Length:  3 \r\n\r\nhello"
    "GET /v2/health/live HTTP/1.1\r\nHost: h\r\n\r\n"
    "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n"
    "GET /last HTTP/1.1\r\nConnection: close\r\n\r\n";

void CheckPipelined(const Outcome& o) {
  if (!CHECK_EQ(o.error, 0)) return;
  if (!CHECK_EQ(o.requests.size(), size_t{4})) return;
  CHECK_EQ(o.requests[0].method, std::string("POST"));
  CHECK_EQ(o.requests[0].path, std::string("/v2/models/m/infer"));
  CHECK_EQ(o.requests[0].query, std::string("x=1"));
  CHECK_EQ(o.requests[0].body, std::string("hello"));
  CHECK_EQ(o.requests[0].headers.size(), size_t{3});
  CHECK_EQ(o.requests[0].headers[2].second, std::string("3"));
  CHECK_EQ(o.requests[1].target, std::string("/v2/health/live"));
  CHECK_EQ(o.requests[1].body, std::string());
  CHECK_EQ(o.requests[2].body, std::string("Wikipedia"));
  CHECK(o.requests[2].keep_alive);
  CHECK_EQ(o.requests[3].path, std::string("/last"));
  CHECK(!o.requests[3].keep_alive);
}

void TestPipelinedEverySplit() {
  CheckPipelined(Run(kPipelined, {}));
  for (size_t cut = 1; cut < kPipelined.size(); ++cut) {
    test::SetContext("cut=" + std::to_string(cut));
    CheckPipelined(Run(kPipelined, {cut}));
  }
  // Byte by byte.
  std::vector<size_t> every;
  for (size_t i = 1; i < kPipelined.size(); ++i) every.push_back(i);
  test::SetContext("byte by byte");
  CheckPipelined(Run(kPipelined, every));
  test::SetContext("");
}

void TestKeepAliveRules() {
  auto one = [](const std::string& wire) { return Run(wire, {}).requests.at(0).keep_alive; };
  CHECK(one("GET / HTTP/1.1\r\n\r\n"));
  CHECK(!one("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
  CHECK(!one("GET / HTTP/1.0\r\n\r\n"));
  CHECK(one("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  CHECK(!one("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"));
}

void TestExpectContinue() {
  const std::string head = "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  Outcome o = Run(head + "abc", {head.size()});
  CHECK_EQ(o.continues, 1);
  CHECK_EQ(o.requests.size(), size_t{1});
  // Body in the same read: no interim response is needed.
  o = Run(head + "abc", {});
  CHECK_EQ(o.continues, 0);
  o = Run("POST /x HTTP/1.1\r\nExpect: something\r\nContent-Length: 3\r\n\r\nabc", {});
  CHECK_EQ(o.error, 417);
}

void TestLimits() {
  HttpParserLimits limits;
  limits.max_header_bytes = 256;
  limits.max_headers = 4;
  limits.max_body_bytes = 10;
  // The head never ends: refused once it passes the limit, without waiting.
  Outcome o = Run("GET /" + std::string(400, 'a'), {}, limits);
  CHECK_EQ(o.error, 431);
  CHECK_EQ(o.message, std::string("request line too long"));
  o = Run("GET / HTTP/1.1\r\nX: " + std::string(300, 'b') + "\r\n\r\n", {}, limits);
  CHECK_EQ(o.error, 431);
  std::string many = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 5; ++i) many += "H" + std::to_string(i) + ": v\r\n";
  o = Run(many + "\r\n", {}, limits);
  CHECK_EQ(o.error, 431);
  // Content-Length over the limit: refused at the head, before the body.
  o = Run("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", {}, limits);
  CHECK_EQ(o.error, 413);
  CHECK(o.message.find("larger than 10") != std::string::npos);
  o =
      Run("POST / HTTP/1.1\r\nTransfer-Encoding: "
          "chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n",
          {}, limits);
  CHECK_EQ(o.error, 413);
  o = Run("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", {}, limits);
  CHECK_EQ(o.error, 0);
  CHECK_EQ(o.requests.size(), size_t{1});
}

void TestMalformed() {
  const char* bad[] = {
      "GARBAGE\r\n\r\n",
      "GET /\r\n\r\n",
      "GET / HTTP/2.0\r\n\r\n",
      "GET  / HTTP/1.1\r\n\r\n",
      "G(T / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
  };
  for (const char* wire : bad) {
    test::SetContext(wire);
    Outcome o = Run(wire, {});
    CHECK_EQ(o.error, 400);
    CHECK(!o.message.empty());
  }
  test::SetContext("");
  // The same Content-Length twice is fine; blank lines between requests too.
  Outcome o =
      Run("\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab\r\n"
          "GET / HTTP/1.1\r\n\r\n",
          {});
  CHECK_EQ(o.error, 0);
  CHECK_EQ(o.requests.size(), size_t{2});
  // An error is sticky.
  HttpRequestParser parser;
  parser.Feed("BAD\r\n\r\n", 7);
  HttpRequest req;
  CHECK(parser.Next(&req) == HttpRequestParser::Result::kError);
  parser.Feed("GET / HTTP/1.1\r\n\r\n", 18);
  CHECK(parser.Next(&req) == HttpRequestParser::Result::kError);
}

void TestInRequest() {
  HttpRequestParser parser;
  HttpRequest req;
  CHECK(!parser.in_request());
  parser.Feed("GET / HT", 8);
  CHECK(parser.Next(&req) == HttpRequestParser::Result::kNeedMore);
  CHECK(parser.in_request());
  parser.Feed("TP/1.1\r\n\r\n", 10);
  CHECK(parser.Next(&req) == HttpRequestParser::Result::kRequest);
  CHECK(!parser.in_request());
}

}  // namespace
}  // namespace aiarch

int main() {
  aiarch::TestPipelinedEverySplit();
  aiarch::TestKeepAliveRules();
  aiarch::TestExpectContinue();
  aiarch::TestLimits();
  aiarch::TestMalformed();
  aiarch::TestInRequest();
  return aiarch::test::Finish("test_http_parser");
}
