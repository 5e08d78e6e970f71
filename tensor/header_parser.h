// The JSON half of safetensors decoding: turns a header's text into entries and metadata, checking
// every rule of PROTOCOL section 2 that concerns the header alone (one object, no duplicate keys,
// names, entry keys, dtype, shape, data_offsets, size = product(shape) * itemsize, metadata,
// UTF-8). The rules that need the data buffer (coverage, BOOL bytes) are checked by Decode.
// Internal to the tensor module.
#ifndef DMOE_TENSOR_HEADER_PARSER_H_
#define DMOE_TENSOR_HEADER_PARSER_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::safetensors::internal {

struct HeaderEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Offsets into the data buffer; begin <= end and end - begin == product(shape) * itemsize hold.
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct ParsedHeader {
  // In header order.
  std::vector<HeaderEntry> entries;
  std::map<std::string, std::string> metadata;
};

// `text` is the header without its trailing space padding; it must start with '{' and end with '}'
// (the caller checks both, and the absence of NUL bytes). kInvalidArgument names the broken rule.
Result<ParsedHeader> ParseHeader(std::string_view text);

// kInvalidArgument unless `name` is a valid tensor name: 1 to 256 bytes of printable UTF-8, not
// "__metadata__". Shared with Encode.
Status CheckTensorName(std::string_view name);

// The byte size of a tensor, product(shape) * ItemSize(dtype), or false when it does not fit in
// 64 bits. A zero dimension makes the size 0 whatever the others are. Dimensions must be >= 0.
bool TensorBytes(DType dtype, const std::vector<int64_t>& shape, uint64_t* bytes);

// "[2, 3]".
std::string ShapeToString(const std::vector<int64_t>& shape);

// A kInvalidArgument status whose message is "safetensors: " + message.
Status Refuse(std::string message);

}  // namespace dmoe::safetensors::internal

#endif  // DMOE_TENSOR_HEADER_PARSER_H_
