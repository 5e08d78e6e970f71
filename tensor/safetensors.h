// dmoe::safetensors: the torch-free codec for the tensor payload of PROTOCOL section 2.
//
// Decode validates every acceptance rule of the protocol and answers kInvalidArgument with a
// message that starts with "safetensors: " and names the broken rule, e.g. "safetensors: header
// length 2000000 exceeds 1 MiB". It does not copy the data buffer: the returned views point into
// the caller's bytes, which must outlive them. Encode writes a blob that Decode accepts, and
// refuses (kInvalidArgument) any input Decode would refuse. All functions are pure and safe to call
// from any thread.
//
// Rules beyond the letter of the protocol, chosen here:
// - "printable" for a tensor name means no control character (U+0000..U+001F, U+007F..U+009F);
//   spaces and every other code point are allowed; the name `__metadata__` is reserved.
// - a NUL character is refused anywhere in the header, raw or as the escape \u0000.
// - data_offsets beyond the data buffer are refused; an empty tensor must sit on a tensor boundary
//   (sorted by (begin, end), every begin equals the previous end).
// - a blob with no tensors (`{}` and no data) is valid.
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
// Encode pads the header with spaces so that the data buffer starts at a multiple of this offset.
constexpr size_t kDataAlignment = 8;
// The reserved header key that holds the metadata.
constexpr std::string_view kMetadataKey = "__metadata__";

// A tensor inside a blob; `data` points into the decoded blob (not owned). Elements are
// little-endian; `data` may be unaligned when the blob itself is.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;

  // The product of `shape` (1 for rank 0). Always exact for a view returned by Decode; -1 when a
  // hand-built shape has a negative dimension or its product overflows int64.
  int64_t NumElements() const;
};

struct Decoded {
  // In the order of their data offsets (ties, i.e. empty tensors, in header order).
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

// Encodes tensors (laid out in the given order) and metadata into one blob, omitting __metadata__
// when `metadata` is empty. kInvalidArgument when an input breaks a rule of the protocol (bad name,
// rank, negative dimension, size mismatch, duplicate name, BOOL byte other than 0 or 1, string that
// is not UTF-8 or holds a NUL, header past 1 MiB).
Result<std::vector<uint8_t>> Encode(const std::vector<TensorRef>& tensors,
                                    const std::map<std::string, std::string>& metadata = {});

// Encode into `*blob`, replacing its contents but reusing its capacity: a caller that encodes
// repeatedly avoids a fresh allocation (and its page faults) per blob. On error `*blob` is left
// empty.
Status EncodeInto(const std::vector<TensorRef>& tensors,
                  const std::map<std::string, std::string>& metadata, std::vector<uint8_t>* blob);

}  // namespace dmoe::safetensors

#endif  // DMOE_TENSOR_SAFETENSORS_H_
