// Helpers for the tensor tests: hand-made safetensors blobs and a refusal check.
#ifndef DMOE_TESTS_TENSOR_TEST_BLOBS_H_
#define DMOE_TESTS_TENSOR_TEST_BLOBS_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::safetensors::testing {

// A blob with the given header length field, then `rest` verbatim.
inline std::vector<uint8_t> RawBlob(uint64_t header_length, std::string_view rest) {
  std::vector<uint8_t> blob(8);
  for (int i = 0; i < 8; ++i) blob[i] = static_cast<uint8_t>(header_length >> (8 * i));
  blob.insert(blob.end(), rest.begin(), rest.end());
  return blob;
}

// A well-framed blob: the true length of `header`, the header, then `data`.
inline std::vector<uint8_t> Blob(std::string_view header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> blob = RawBlob(header.size(), header);
  blob.insert(blob.end(), data.begin(), data.end());
  return blob;
}

inline std::vector<uint8_t> Bytes(size_t n, uint8_t value = 0) {
  return std::vector<uint8_t>(n, value);
}

// Succeeds when Decode refuses `blob` with kInvalidArgument and a message naming `rule`.
inline ::testing::AssertionResult Refused(const std::vector<uint8_t>& blob, std::string_view rule) {
  Result<Decoded> decoded = Decode(blob);
  if (decoded.ok()) return ::testing::AssertionFailure() << "accepted; expected: " << rule;
  const Status& status = decoded.status();
  if (status.code() != Code::kInvalidArgument) {
    return ::testing::AssertionFailure() << "wrong code: " << status.ToString();
  }
  if (status.message().rfind("safetensors: ", 0) != 0 ||
      status.message().find(rule) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "message \"" << status.message() << "\" does not name \"" << rule << "\"";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace dmoe::safetensors::testing

#endif  // DMOE_TESTS_TENSOR_TEST_BLOBS_H_
