// Fashion-MNIST from Debian's dataset-fashion-mnist package: gzip'd IDX files, read without any
// download. Torch-free; the trainer turns pixels into floats (byte / 255, row-major, PROTOCOL 5).
// Every function here is a pure read: safe to call from any thread, nothing is cached.
#ifndef DMOE_DATA_FASHION_MNIST_H_
#define DMOE_DATA_FASHION_MNIST_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace dmoe::data {

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// One IDX array: dims and the raw unsigned bytes (type 0x08 only, which both files use).
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

// Parses an uncompressed IDX buffer. kInvalidArgument naming what is wrong: bad magic, a type other
// than unsigned byte, more than 4 dims, a size that does not match the dims.
Result<IdxArray> ParseIdx(std::span<const uint8_t> bytes);
// Reads a gzip'd (or plain) IDX file; at most `max_bytes` after decompression.
Result<IdxArray> ReadIdxFile(const std::string& path, size_t max_bytes = 256 << 20);

struct ImageDataset {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols, row-major
  std::vector<uint8_t> labels;  // count, 0..9
};

// The train (60000) or test (10000) split from `dir`. kNotFound, naming the package to install,
// when the files are missing.
Result<ImageDataset> LoadFashionMnist(bool train, const std::string& dir = kFashionMnistDir);

}  // namespace dmoe::data

#endif  // DMOE_DATA_FASHION_MNIST_H_
