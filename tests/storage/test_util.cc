#include "tests/storage/test_util.h"

namespace dmoe::storage::testing {
namespace {

// splitmix64: a tiny, well-mixed generator, so contents depend on nothing but the step.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform-enough integer in [lo, hi].
  int64_t Uniform(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t state_;
};

}  // namespace

std::vector<NamedTensor> TensorsForStep(int64_t step) {
  Rng rng(static_cast<uint64_t>(step) * 7919 + 17);
  const int count = static_cast<int>(rng.Uniform(1, 4));
  std::vector<NamedTensor> tensors;
  for (int i = 0; i < count; ++i) {
    NamedTensor t;
    t.name = (i % 2 == 0 ? "param/layer" : "optim/layer") + std::to_string(i / 2) +
             (i % 2 == 0 ? ".weight" : ".weight.exp_avg");
    switch (rng.Uniform(0, 3)) {
      case 0:
        t.dtype = safetensors::DType::kF32;
        break;
      case 1:
        t.dtype = safetensors::DType::kU8;
        break;
      case 2:
        t.dtype = safetensors::DType::kI64;
        break;
      default:
        t.dtype = safetensors::DType::kBF16;
        break;
    }
    // Rows x cols elements; up to ~256 KiB for 8-byte types, sometimes tiny, sometimes empty.
    const int64_t rows = rng.Uniform(0, 64);
    const int64_t cols = rng.Uniform(1, 512);
    t.shape = {rows, cols};
    t.data.resize(static_cast<size_t>(rows * cols) * safetensors::ItemSize(t.dtype));
    for (uint8_t& byte : t.data) byte = static_cast<uint8_t>(rng.Next());
    tensors.push_back(std::move(t));
  }
  return tensors;
}

std::map<std::string, std::string> MetadataForStep(int64_t step) {
  return {{"schema", "crash-test-v1"},
          {"lr", std::to_string(0.001 * static_cast<double>(step % 7))}};
}

std::string DiffFromExpected(const Checkpoint& checkpoint) {
  const std::string where = "step " + std::to_string(checkpoint.step) + ": ";
  const std::vector<NamedTensor> expected = TensorsForStep(checkpoint.step);
  if (checkpoint.metadata != MetadataForStep(checkpoint.step)) return where + "metadata differs";
  if (checkpoint.tensors.size() != expected.size()) {
    return where + std::to_string(checkpoint.tensors.size()) + " tensors, expected " +
           std::to_string(expected.size());
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    const NamedTensor& got = checkpoint.tensors[i];
    const NamedTensor& want = expected[i];
    if (got.name != want.name || got.dtype != want.dtype || got.shape != want.shape) {
      return where + "tensor " + std::to_string(i) + " is '" + got.name + "', expected '" +
             want.name + "' (or its dtype or shape differs)";
    }
    if (got.data != want.data) return where + "the bytes of '" + want.name + "' differ";
  }
  Checkpoint recomputed;
  recomputed.uid = checkpoint.uid;
  recomputed.step = checkpoint.step;
  recomputed.created_unix_ms = checkpoint.created_unix_ms;
  recomputed.metadata = MetadataForStep(checkpoint.step);
  recomputed.tensors = expected;
  if (CheckpointChecksum(recomputed) != checkpoint.checksum) return where + "checksum differs";
  return "";
}

}  // namespace dmoe::storage::testing
