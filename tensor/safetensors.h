// dmoe::safetensors: the torch-free codec for the tensor payload of PROTOCOL section 2.
//
// Decode validates every acceptance rule of the protocol and answers kInvalidArgument with a message
// that names the broken rule. It does not copy the data buffer: the returned views point into the
// caller's bytes, which must outlive them. Encode writes a blob that Decode accepts.
// All functions are pure and safe to call from any thread.
#ifndef DMOE_TENSOR_SAFETENSORS_H_
#define DMOE_TENSOR_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe::safetensors {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kU8, kBool };

// The wire name ("F32", "BOOL", ...).
std::string_view DTypeName(DType dtype);
// The inverse of DTypeName; kInvalidArgument for any other string.
Result<DType> ParseDType(std::string_view name);
// Bytes per element.
size_t ItemSize(DType dtype);

constexpr size_t kMaxHeaderBytes = 1 << 20;
constexpr size_t kMaxRank = 8;
constexpr size_t kMaxNameBytes = 256;

// A tensor inside a blob; `data` points into the decoded blob (not owned).
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;

  int64_t NumElements() const;
};

struct Decoded {
  // In the order of their data offsets.
  std::vector<TensorView> tensors;
  // Empty when the blob has no __metadata__.
  std::map<std::string, std::string> metadata;

  // The tensor called `name`, or nullptr.
  const TensorView* Find(std::string_view name) const;
};

// Validates and parses a blob. The views in the result alias `blob`.
Result<Decoded> Decode(std::span<const uint8_t> blob);

// A tensor to encode; `data` must hold exactly product(shape) * ItemSize(dtype) bytes.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
};

// Encodes tensors (laid out in the given order) and metadata into one blob. kInvalidArgument when a
// tensor breaks a rule of the protocol (bad name, rank, size mismatch, duplicate name).
Result<std::vector<uint8_t>> Encode(const std::vector<TensorRef>& tensors,
                                    const std::map<std::string, std::string>& metadata = {});

}  // namespace dmoe::safetensors

#endif  // DMOE_TENSOR_SAFETENSORS_H_
