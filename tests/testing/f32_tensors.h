// F32 tensors as safetensors request bodies, for tests and benchmarks that speak the wire without
// torch: a deterministic pseudo-random pattern and an encoder that fails the running test (instead
// of returning a Status) when the codec refuses its input.
#ifndef DMOE_TESTS_TESTING_F32_TENSORS_H_
#define DMOE_TESTS_TESTING_F32_TENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dmoe::testing {

// One F32 tensor for a body.
struct F32Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// A deterministic pseudo-random tensor in [-scale, scale) (splitmix64 of `seed`).
F32Tensor Pattern(const std::string& name, std::vector<int64_t> shape, uint64_t seed,
                  float scale = 1.0f);
// Encodes tensors and metadata as a safetensors blob. On a codec error the current GoogleTest test
// fails (EXPECT) and the result is empty.
std::vector<uint8_t> EncodeF32(const std::vector<F32Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_F32_TENSORS_H_
