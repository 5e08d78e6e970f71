// Fuzzes safetensors::Decode. Every refusal must be kInvalidArgument with a "safetensors: " message
// that is valid UTF-8 (it travels in JSON error bodies). Every accepted blob must re-encode, decode
// to the same tensors and metadata, and re-encode to the same bytes again.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "tensor/safetensors.h"
#include "tensor/utf8.h"

namespace {

using dmoe::safetensors::Decoded;
using dmoe::safetensors::TensorRef;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "safetensors_fuzz: %s\n", what.c_str());
  std::abort();
}

std::vector<TensorRef> Refs(const Decoded& decoded) {
  std::vector<TensorRef> refs;
  for (const auto& t : decoded.tensors) refs.push_back({t.name, t.dtype, t.shape, t.data});
  return refs;
}

void CheckSame(const Decoded& a, const Decoded& b) {
  if (a.metadata != b.metadata) Fail("metadata changed in the round trip");
  if (a.tensors.size() != b.tensors.size()) Fail("tensor count changed in the round trip");
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& x = a.tensors[i];
    const auto& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape ||
        x.data.size() != y.data.size() ||
        !std::equal(x.data.begin(), x.data.end(), y.data.begin())) {
      Fail("tensor " + std::to_string(i) + " changed in the round trip");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> blob(data, size);
  dmoe::Result<Decoded> decoded = dmoe::safetensors::Decode(blob);
  if (!decoded.ok()) {
    const dmoe::Status status = decoded.status();
    if (status.code() != dmoe::Code::kInvalidArgument)
      Fail("refusal not kInvalidArgument: " + status.ToString());
    if (status.message().rfind("safetensors: ", 0) != 0)
      Fail("message without prefix: " + status.message());
    if (!dmoe::safetensors::internal::IsValidUtf8(status.message())) Fail("message not UTF-8");
    return 0;
  }
  for (const auto& t : decoded->tensors) {
    if (!t.data.empty() && (t.data.data() < data || t.data.data() + t.data.size() > data + size)) {
      Fail("a view points outside the blob");
    }
    if (t.NumElements() < 0) Fail("NumElements of a decoded view is negative");
  }
  dmoe::Result<std::vector<uint8_t>> encoded =
      dmoe::safetensors::Encode(Refs(*decoded), decoded->metadata);
  if (!encoded.ok()) Fail("Encode refused what Decode accepted: " + encoded.status().ToString());
  dmoe::Result<Decoded> again = dmoe::safetensors::Decode(*encoded);
  if (!again.ok()) Fail("Decode refused what Encode wrote: " + again.status().ToString());
  CheckSame(*decoded, *again);
  dmoe::Result<std::vector<uint8_t>> encoded_again =
      dmoe::safetensors::Encode(Refs(*again), again->metadata);
  if (!encoded_again.ok() || *encoded_again != *encoded) Fail("Encode is not deterministic");
  return 0;
}
