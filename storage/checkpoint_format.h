// The on-disk layout of expert checkpoints. Internal to storage; tests include it to inspect keys.
//
// Column family "experts", one version of one expert:
//   <uid> '/' <step, 8 bytes big-endian> 'm'                          -> manifest
//   <uid> '/' <step, 8 bytes big-endian> 't' <index, 4 bytes big-endian> -> bytes of tensor `index`
// Column family "meta":
//   <uid> -> the kept steps, ascending, each 8 bytes big-endian (the last one is the latest)
// Big-endian steps make bytewise key order equal numeric order, and a uid never contains '/', so
// the keys of one version, and of one expert, are contiguous ranges.
//
// A manifest is "DMOECKP1", then the body (uid, step, creation time, metadata, and for each tensor
// its name, dtype, shape, byte count and BLAKE2b-256 digest), then the checksum: BLAKE2b-256 of
// everything before it. As the body holds each tensor's digest, the checksum covers every byte of
// the checkpoint without hashing it all in one buffer.
#ifndef DMOE_STORAGE_CHECKPOINT_FORMAT_H_
#define DMOE_STORAGE_CHECKPOINT_FORMAT_H_

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/identity.h"
#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::storage::format {

// 8 bytes, big-endian, so that keys sort by step.
std::string EncodeStep(int64_t step);

// uid '/' step: the prefix of every key of one version.
std::string VersionPrefix(std::string_view uid, int64_t step);
std::string ManifestKey(std::string_view uid, int64_t step);
std::string TensorKey(std::string_view uid, int64_t step, uint32_t index);
// [begin, end) covering every key of one version, or of every version of an expert.
std::pair<std::string, std::string> VersionRange(std::string_view uid, int64_t step);
std::pair<std::string, std::string> ExpertRange(std::string_view uid);

// The "meta" value: kept steps, ascending. Decode answers kInternal when the value is malformed.
std::string EncodeSteps(const std::vector<int64_t>& steps);
Result<std::vector<int64_t>> DecodeSteps(std::string_view value);

struct TensorEntry {
  std::string name;
  safetensors::DType dtype = safetensors::DType::kF32;
  std::vector<int64_t> shape;
  uint64_t byte_size = 0;
  Hash256 digest{};
};

struct Manifest {
  std::string uid;
  int64_t step = 0;
  int64_t created_unix_ms = 0;
  std::map<std::string, std::string> metadata;
  std::vector<TensorEntry> tensors;
};

// The manifest with its checksum appended; `checksum` receives that checksum when not null.
std::string EncodeManifest(const Manifest& manifest, Hash256* checksum = nullptr);
// Verifies the checksum and parses. kInternal naming the defect when anything does not add up.
Result<Manifest> DecodeManifest(std::string_view bytes, Hash256* checksum = nullptr);

// True when `text` is well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF).
bool IsValidUtf8(std::string_view text);

}  // namespace dmoe::storage::format

#endif  // DMOE_STORAGE_CHECKPOINT_FORMAT_H_
