#include "tensor/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "tensor/header_parser.h"
#include "tensor/utf8.h"

namespace dmoe::safetensors {
namespace {

using internal::QuoteForMessage;
using internal::Refuse;

constexpr size_t kLengthBytes = 8;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t item_size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8}, {DType::kI64, "I64", 8},   {DType::kI32, "I32", 4},
    {DType::kU8, "U8", 1},   {DType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // Unreachable for a valid enumerator.
}

uint64_t ReadLength(const uint8_t* p) {
  uint64_t n = 0;
  for (size_t i = 0; i < kLengthBytes; ++i) n |= static_cast<uint64_t>(p[i]) << (8 * i);
  return n;
}

void WriteLength(uint64_t n, uint8_t* p) {
  for (size_t i = 0; i < kLengthBytes; ++i) p[i] = static_cast<uint8_t>(n >> (8 * i));
}

Status CheckBoolBytes(std::string_view name, std::span<const uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] > 1) {
      return Refuse("BOOL tensor " + QuoteForMessage(name) + " has byte " +
                    std::to_string(data[i]) + " at element " + std::to_string(i) +
                    "; BOOL bytes must be 0 or 1");
    }
  }
  return Status::Ok();
}

// The metadata rules an encoder can break: every string valid UTF-8 without NUL.
Status CheckMetadataString(std::string_view what, std::string_view s) {
  if (!internal::IsValidUtf8(s)) {
    return Refuse("__metadata__ " + std::string(what) + " " + QuoteForMessage(s) +
                  " is not valid UTF-8");
  }
  if (s.find('\0') != std::string_view::npos) {
    return Refuse("__metadata__ " + std::string(what) + " " + QuoteForMessage(s) +
                  " holds a NUL character; NUL is refused");
  }
  return Status::Ok();
}

// Checks that the entries, sorted by (begin, end), tile [0, data_size) exactly; returns the
// permutation of `entries` in that order.
Result<std::vector<size_t>> CheckCoverage(const std::vector<internal::HeaderEntry>& entries,
                                          uint64_t data_size) {
  for (const internal::HeaderEntry& e : entries) {
    if (e.end > data_size) {
      return Refuse("tensor " + QuoteForMessage(e.name) + ": data_offsets [" +
                    std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] go past the data buffer of " + std::to_string(data_size) + " bytes");
    }
  }
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::pair(entries[a].begin, entries[a].end) <
           std::pair(entries[b].begin, entries[b].end);
  });
  uint64_t cursor = 0;
  const internal::HeaderEntry* previous = nullptr;
  for (size_t index : order) {
    const internal::HeaderEntry& e = entries[index];
    if (e.begin > cursor) {
      return Refuse("data bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                    ") belong to no tensor; tensors must cover the data buffer without gaps");
    }
    if (e.begin < cursor) {
      return Refuse("tensor " + QuoteForMessage(e.name) + " (begin " + std::to_string(e.begin) +
                    ") overlaps tensor " + QuoteForMessage(previous->name) + " (end " +
                    std::to_string(cursor) + "); tensors must not overlap");
    }
    cursor = e.end;
    previous = &e;
  }
  if (cursor != data_size) {
    return Refuse(std::to_string(data_size - cursor) +
                  " trailing data bytes after the last tensor; tensors must cover the data buffer "
                  "exactly");
  }
  return order;
}

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return Refuse("dtype " + QuoteForMessage(name) +
                " is not one of F32, F16, BF16, F64, I64, I32, U8, BOOL");
}

size_t ItemSize(DType dtype) { return Info(dtype).item_size; }

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return -1;
    if (dim == 0) return 0;
  }
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(n, dim, &n)) return -1;
  }
  return n;
}

const TensorView* Decoded::Find(std::string_view name) const {
  for (const TensorView& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<Decoded> Decode(std::span<const uint8_t> blob) {
  if (blob.size() < kLengthBytes) {
    return Refuse("blob of " + std::to_string(blob.size()) +
                  " bytes is shorter than the 8-byte header length");
  }
  const uint64_t header_length = ReadLength(blob.data());
  if (header_length > kMaxHeaderBytes) {
    return Refuse("header length " + std::to_string(header_length) + " exceeds 1 MiB");
  }
  if (header_length > blob.size() - kLengthBytes) {
    return Refuse("header length " + std::to_string(header_length) + " does not fit in a blob of " +
                  std::to_string(blob.size()) + " bytes");
  }
  const std::string_view header(reinterpret_cast<const char*>(blob.data()) + kLengthBytes,
                                header_length);
  if (const size_t nul = header.find('\0'); nul != std::string_view::npos) {
    return Refuse("header holds a NUL byte at offset " + std::to_string(nul) +
                  "; NUL bytes are refused");
  }
  if (header.empty() || header.front() != '{') {
    return Refuse("header must start with '{'");
  }
  const size_t last = header.find_last_not_of(' ');
  if (header[last] != '}') {
    return Refuse(
        "header must be one JSON object followed only by spaces (0x20); it ends with "
        "byte " +
        std::to_string(static_cast<uint8_t>(header[last])) + " before the padding");
  }
  DMOE_ASSIGN_OR_RETURN(internal::ParsedHeader parsed,
                        internal::ParseHeader(header.substr(0, last + 1)));

  const std::span<const uint8_t> data = blob.subspan(kLengthBytes + header_length);
  DMOE_ASSIGN_OR_RETURN(std::vector<size_t> order, CheckCoverage(parsed.entries, data.size()));

  Decoded decoded;
  decoded.metadata = std::move(parsed.metadata);
  decoded.tensors.reserve(order.size());
  for (size_t index : order) {
    internal::HeaderEntry& e = parsed.entries[index];
    TensorView view;
    view.name = std::move(e.name);
    view.dtype = e.dtype;
    view.shape = std::move(e.shape);
    view.data = data.subspan(e.begin, e.end - e.begin);
    if (view.dtype == DType::kBool) DMOE_RETURN_IF_ERROR(CheckBoolBytes(view.name, view.data));
    decoded.tensors.push_back(std::move(view));
  }
  return decoded;
}

Result<std::vector<uint8_t>> Encode(const std::vector<TensorRef>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  std::vector<uint8_t> blob;
  DMOE_RETURN_IF_ERROR(EncodeInto(tensors, metadata, &blob));
  return blob;
}

Status EncodeInto(const std::vector<TensorRef>& tensors,
                  const std::map<std::string, std::string>& metadata, std::vector<uint8_t>* blob) {
  blob->clear();
  // The header is written by hand: __metadata__ first, then the entries in layout order, so that
  // Decode, which breaks ties between empty tensors at one offset by header order, returns them in
  // the given order. Strings go through nlohmann's escaper after their UTF-8 check, so it cannot
  // throw.
  std::string text = "{";
  const auto append_string = [&text](std::string_view s) { text += nlohmann::json(s).dump(); };
  if (!metadata.empty()) {
    text += "\"__metadata__\":{";
    for (const auto& [key, value] : metadata) {
      DMOE_RETURN_IF_ERROR(CheckMetadataString("key", key));
      DMOE_RETURN_IF_ERROR(CheckMetadataString("value", value));
      if (text.back() != '{') text += ',';
      append_string(key);
      text += ':';
      append_string(value);
    }
    text += '}';
  }
  std::unordered_set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    DMOE_RETURN_IF_ERROR(internal::CheckTensorName(t.name));
    if (!names.insert(t.name).second) {
      return Refuse("duplicate key " + QuoteForMessage(t.name) + " in header");
    }
    const std::string tensor = "tensor " + QuoteForMessage(t.name);
    if (t.shape.size() > kMaxRank) {
      return Refuse(tensor + ": shape has " + std::to_string(t.shape.size()) +
                    " dimensions, more than 8");
    }
    for (int64_t dim : t.shape) {
      if (dim < 0) {
        return Refuse(tensor + ": shape " + internal::ShapeToString(t.shape) +
                      " has a negative dimension");
      }
    }
    uint64_t bytes = 0;
    if (!internal::TensorBytes(t.dtype, t.shape, &bytes)) {
      return Refuse(tensor + ": shape " + internal::ShapeToString(t.shape) + " of " +
                    std::string(DTypeName(t.dtype)) + " overflows 64 bits");
    }
    if (bytes != t.data.size()) {
      return Refuse(tensor + ": data holds " + std::to_string(t.data.size()) + " bytes but shape " +
                    internal::ShapeToString(t.shape) + " of " + std::string(DTypeName(t.dtype)) +
                    " needs " + std::to_string(bytes));
    }
    if (t.dtype == DType::kBool) DMOE_RETURN_IF_ERROR(CheckBoolBytes(t.name, t.data));
    if (text.back() != '{') text += ',';
    append_string(t.name);
    text += ":{\"dtype\":\"";
    text += DTypeName(t.dtype);
    text += "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d != 0) text += ',';
      text += std::to_string(t.shape[d]);
    }
    text += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) +
            "]}";
    offset += bytes;
  }
  text += '}';
  text.append((kDataAlignment - text.size() % kDataAlignment) % kDataAlignment, ' ');
  if (text.size() > kMaxHeaderBytes) {
    return Refuse("header length " + std::to_string(text.size()) + " exceeds 1 MiB");
  }

  blob->reserve(kLengthBytes + text.size() + offset);
  blob->resize(kLengthBytes);
  WriteLength(text.size(), blob->data());
  blob->insert(blob->end(), text.begin(), text.end());
  for (const TensorRef& t : tensors) blob->insert(blob->end(), t.data.begin(), t.data.end());
  return Status::Ok();
}

}  // namespace dmoe::safetensors
