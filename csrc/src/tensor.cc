#include "aiarch/tensor.h"

#include <cstdlib>
#include <new>

namespace aiarch {

namespace {
struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "bool", 1},     {DType::kUint8, "uint8", 1},   {DType::kUint16, "uint16", 2},
    {DType::kUint32, "uint32", 4}, {DType::kUint64, "uint64", 8}, {DType::kInt8, "int8", 1},
    {DType::kInt16, "int16", 2},   {DType::kInt32, "int32", 4},   {DType::kInt64, "int64", 8},
    {DType::kFp16, "float16", 2},  {DType::kBf16, "bfloat16", 2}, {DType::kFp32, "float32", 4},
    {DType::kFp64, "float64", 8},
};
}  // namespace

size_t DTypeSize(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }
const char* DTypeName(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }

Status DTypeFromName(const std::string& name, DType* out) {
  for (const auto& info : kDTypes) {
    if (name == info.name) {
      *out = info.dtype;
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("unknown dtype '" + name +
                                 "'; expected one of bool, uint8, uint16, uint32, uint64, int8, "
                                 "int16, int32, int64, float16, bfloat16, float32, float64");
}

int64_t TensorSpec::RowElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string TensorSpec::ToString() const {
  std::string s = name + ": " + DTypeName(dtype) + "[-1";
  for (int64_t d : shape) s += ", " + std::to_string(d);
  return s + "]";
}

std::shared_ptr<Buffer> Buffer::Allocate(size_t bytes) {
  // 64-byte alignment: one cache line, and what vectorised kernels expect.
  const size_t rounded = ((bytes + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) return nullptr;
  return std::shared_ptr<Buffer>(new Buffer(static_cast<uint8_t*>(p), bytes));
}

Buffer::~Buffer() { std::free(data_); }

}  // namespace aiarch
