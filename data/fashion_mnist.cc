#include "data/fashion_mnist.h"

#include <zlib.h>

#include <filesystem>

namespace dmoe::data {

Result<IdxArray> ParseIdx(std::span<const uint8_t> b) {
  if (b.size() < 4) return InvalidArgumentError("IDX: shorter than its 4-byte magic");
  if (b[0] != 0 || b[1] != 0)
    return InvalidArgumentError("IDX: magic must start with two zero bytes");
  if (b[2] != 0x08)
    return InvalidArgumentError("IDX: only unsigned-byte data (type 0x08) is supported");
  const size_t ndims = b[3];
  if (ndims < 1 || ndims > 4)
    return InvalidArgumentError("IDX: 1 to 4 dimensions allowed, got " + std::to_string(ndims));
  if (b.size() < 4 + 4 * ndims) return InvalidArgumentError("IDX: truncated dimension sizes");
  IdxArray out;
  uint64_t total = 1;
  for (size_t i = 0; i < ndims; ++i) {
    const uint8_t* p = b.data() + 4 + 4 * i;
    uint64_t d = uint64_t{p[0]} << 24 | uint64_t{p[1]} << 16 | uint64_t{p[2]} << 8 | p[3];
    total *= d;
    if (total > b.size())
      return InvalidArgumentError("IDX: dimensions promise more bytes than the file holds");
    out.dims.push_back(static_cast<int64_t>(d));
  }
  const size_t header = 4 + 4 * ndims;
  if (b.size() - header != total) {
    return InvalidArgumentError("IDX: " + std::to_string(b.size() - header) +
                                " data bytes, dimensions say " + std::to_string(total));
  }
  out.data.assign(b.begin() + static_cast<std::ptrdiff_t>(header), b.end());
  return out;
}

Result<IdxArray> ReadIdxFile(const std::string& path, size_t max_bytes) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return NotFoundError("cannot open " + path);
  std::vector<uint8_t> bytes;
  uint8_t buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) {
    bytes.insert(bytes.end(), buf, buf + n);
    if (bytes.size() > max_bytes) {
      gzclose(f);
      return InvalidArgumentError(path + " decompresses to more than " + std::to_string(max_bytes) +
                                  " bytes");
    }
  }
  const bool failed = n < 0;
  gzclose(f);
  if (failed) return InvalidArgumentError(path + " is not a readable gzip file");
  Result<IdxArray> parsed = ParseIdx(bytes);
  if (!parsed.ok()) return InvalidArgumentError(path + ": " + parsed.status().message());
  return parsed;
}

Result<ImageDataset> LoadFashionMnist(bool train, const std::string& dir) {
  const std::string prefix = dir + "/" + (train ? "train" : "t10k");
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";
  if (!std::filesystem::exists(images_path) || !std::filesystem::exists(labels_path)) {
    return NotFoundError("Fashion-MNIST not found in " + dir +
                         " (install Debian's dataset-fashion-mnist; scripts/setup does)");
  }
  DMOE_ASSIGN_OR_RETURN(IdxArray images, ReadIdxFile(images_path));
  DMOE_ASSIGN_OR_RETURN(IdxArray labels, ReadIdxFile(labels_path));
  if (images.dims.size() != 3 || labels.dims.size() != 1 || images.dims[0] != labels.dims[0]) {
    return InvalidArgumentError("Fashion-MNIST files in " + dir + " do not match: images " +
                                std::to_string(images.dims.size()) + "-d, labels " +
                                std::to_string(labels.dims.size()) + "-d");
  }
  for (uint8_t l : labels.data) {
    if (l > 9)
      return InvalidArgumentError("Fashion-MNIST label " + std::to_string(l) + " is not 0..9");
  }
  ImageDataset d;
  d.count = images.dims[0];
  d.rows = images.dims[1];
  d.cols = images.dims[2];
  d.pixels = std::move(images.data);
  d.labels = std::move(labels.data);
  return d;
}

}  // namespace dmoe::data
