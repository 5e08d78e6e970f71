// Expert uids, grid prefixes and grid patterns, exactly as PROTOCOL section 1 names them.
//
// Every parser answers kInvalidArgument with a message that names the broken rule and quotes the
// input.
#ifndef DMOE_CORE_UID_H_
#define DMOE_CORE_UID_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe {

constexpr size_t kMaxUidIndices = 4;
constexpr int64_t kMaxUidIndex = 999999;
constexpr size_t kMaxPrefixChars = 32;

// `PREFIX.I0[.I1[.I2[.I3]]]`, e.g. "ffn.3.14".
struct ExpertUid {
  std::string prefix;            // "ffn"
  std::vector<int64_t> indices;  // {3, 14}

  // The canonical text form.
  std::string ToString() const;
  // The grid prefix that holds the first `depth` indices: depth 0 -> "ffn.", 1 -> "ffn.3.".
  std::string GridPrefixAt(size_t depth) const;

  friend bool operator==(const ExpertUid&, const ExpertUid&) = default;
};

Result<ExpertUid> ParseExpertUid(std::string_view text);

// A uid cut after a dot: "ffn." or "ffn.3." (indices holds the coordinates before the cut).
struct GridPrefix {
  std::string prefix;
  std::vector<int64_t> indices;

  std::string ToString() const;
};

// Accepts "ffn." and "ffn.3." ... with at most 3 indices before the final dot.
Result<GridPrefix> ParseGridPrefix(std::string_view text);

// `ffn.[0:4].[0:8]`: every uid of the box; each dimension is a half-open range [begin:end) or a
// single index.
struct GridPattern {
  std::string prefix;
  struct Range {
    int64_t begin = 0;
    int64_t end = 0;  // exclusive
  };
  std::vector<Range> dims;

  // Number of uids in the box.
  int64_t Size() const;
  // Every uid of the box, in row-major order.
  std::vector<ExpertUid> Expand() const;
  bool Contains(const ExpertUid& uid) const;
};

// Refuses empty ranges, ranges beyond the index limits, and boxes of more than `max_size` uids.
Result<GridPattern> ParseGridPattern(std::string_view text, int64_t max_size = 1 << 20);

}  // namespace dmoe

#endif  // DMOE_CORE_UID_H_
