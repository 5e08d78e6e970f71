#include "tests/testing/f32_tensors.h"

#include <gtest/gtest.h>

#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::testing {

F32Tensor Pattern(const std::string& name, std::vector<int64_t> shape, uint64_t seed, float scale) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  F32Tensor t{name, std::move(shape), {}};
  t.values.reserve(static_cast<size_t>(n));
  uint64_t state = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    // splitmix64, top 24 bits as a fraction.
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float unit = static_cast<float>(z >> 40) / static_cast<float>(1 << 24);
    t.values.push_back(scale * (2.0f * unit - 1.0f));
  }
  return t;
}

std::vector<uint8_t> EncodeF32(const std::vector<F32Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  std::vector<safetensors::TensorRef> refs;
  for (const F32Tensor& t : tensors) {
    refs.push_back({t.name,
                    safetensors::DType::kF32,
                    t.shape,
                    {reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size() * 4}});
  }
  Result<std::vector<uint8_t>> blob = safetensors::Encode(refs, metadata);
  EXPECT_TRUE(blob.ok()) << blob.status().ToString();
  return blob.ok() ? std::move(blob).value() : std::vector<uint8_t>{};
}

}  // namespace dmoe::testing
