// Tensor metadata and host buffers shared by the batcher, the cache and the
// executors. A tensor on the batching path always has a leading row (batch)
// dimension; TensorSpec describes everything after it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aiarch/status.h"

namespace aiarch {

// The KServe v2 datatypes that have a fixed element size.
enum class DType : uint8_t {
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kBf16,
  kFp32,
  kFp64,
};

size_t DTypeSize(DType dtype);
// numpy spelling: "bool", "uint8", ..., "float16", "bfloat16", "float32", "float64".
const char* DTypeName(DType dtype);
Status DTypeFromName(const std::string& name, DType* out);

// A shape as error messages print it, e.g. "[2, 64]".
std::string ShapeText(const std::vector<int64_t>& shape);

struct TensorSpec {
  std::string name;
  DType dtype = DType::kFp32;
  std::vector<int64_t> shape;  // trailing dims, without the row dim; all >= 0

  int64_t RowElements() const;
  size_t RowBytes() const { return static_cast<size_t>(RowElements()) * DTypeSize(dtype); }
  std::string ToString() const;  // e.g. "x: float32[-1, 64]"
};

// A 64-byte-aligned host allocation with shared ownership. Whoever holds a
// shared_ptr keeps the bytes alive; views handed to Python hold one too.
// Not thread-safe for concurrent writes; immutable once published.
class Buffer {
 public:
  // Allocates `bytes` (uninitialised). Returns nullptr only on allocation failure.
  static std::shared_ptr<Buffer> Allocate(size_t bytes);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  Buffer(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_;
  size_t size_;
};

}  // namespace aiarch
