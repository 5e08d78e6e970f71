#include "core/uid.h"

#include <optional>

#include "core/integer.h"

namespace dmoe {
namespace {

std::string Quote(std::string_view text) {
  constexpr size_t kMaxQuoted = 80;
  std::string out = "'";
  out.append(text.substr(0, kMaxQuoted));
  if (text.size() > kMaxQuoted) out += "...";
  return out + "'";
}

bool IsPrefixStart(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool IsPrefixChar(char c) { return IsPrefixStart(c) || (c >= '0' && c <= '9') || c == '-'; }

Status CheckPrefix(std::string_view prefix, std::string_view whole) {
  if (prefix.empty()) {
    return InvalidArgumentError("expert uid " + Quote(whole) + ": the prefix is empty");
  }
  if (prefix.size() > kMaxPrefixChars) {
    return InvalidArgumentError("expert uid " + Quote(whole) +
                                ": the prefix is longer than 32 characters");
  }
  if (!IsPrefixStart(prefix[0])) {
    return InvalidArgumentError("expert uid " + Quote(whole) +
                                ": the prefix must start with a letter or '_'");
  }
  for (char c : prefix) {
    if (!IsPrefixChar(c)) {
      return InvalidArgumentError("expert uid " + Quote(whole) +
                                  ": the prefix may hold only letters, digits, '_' and '-'");
    }
  }
  return Status::Ok();
}

// One index: a decimal in 0..999999 without leading zeros.
Result<int64_t> ParseIndex(std::string_view text, std::string_view whole) {
  if (text.empty()) {
    return InvalidArgumentError("expert uid " + Quote(whole) + ": an index is empty");
  }
  for (char c : text) {
    if (c < '0' || c > '9') {
      return InvalidArgumentError("expert uid " + Quote(whole) + ": index '" + std::string(text) +
                                  "' is not a decimal number");
    }
  }
  if (text.size() > 1 && text[0] == '0') {
    return InvalidArgumentError("expert uid " + Quote(whole) + ": index '" + std::string(text) +
                                "' has a leading zero");
  }
  if (text.size() > 6) {
    return InvalidArgumentError("expert uid " + Quote(whole) + ": index '" + std::string(text) +
                                "' is above 999999");
  }
  return *ParseInteger<int64_t>(text);  // Digits only, at most 6 of them.
}

std::vector<std::string_view> SplitDots(std::string_view text) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t dot = text.find('.', start);
    if (dot == std::string_view::npos) {
      parts.push_back(text.substr(start));
      return parts;
    }
    parts.push_back(text.substr(start, dot - start));
    start = dot + 1;
  }
}

std::string Join(const std::string& prefix, const std::vector<int64_t>& indices, size_t count) {
  std::string out = prefix;
  for (size_t i = 0; i < count; ++i) out += "." + std::to_string(indices[i]);
  return out;
}

}  // namespace

std::string ExpertUid::ToString() const { return Join(prefix, indices, indices.size()); }

std::string ExpertUid::GridPrefixAt(size_t depth) const {
  return Join(prefix, indices, std::min(depth, indices.size())) + ".";
}

Result<ExpertUid> ParseExpertUid(std::string_view text) {
  std::vector<std::string_view> parts = SplitDots(text);
  DMOE_RETURN_IF_ERROR(CheckPrefix(parts[0], text));
  if (parts.size() < 2) {
    return InvalidArgumentError("expert uid " + Quote(text) +
                                ": needs at least one index after the prefix, as in 'ffn.3'");
  }
  if (parts.size() - 1 > kMaxUidIndices) {
    return InvalidArgumentError("expert uid " + Quote(text) + ": has more than 4 indices");
  }
  ExpertUid uid;
  uid.prefix = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    DMOE_ASSIGN_OR_RETURN(int64_t index, ParseIndex(parts[i], text));
    uid.indices.push_back(index);
  }
  return uid;
}

std::string GridPrefix::ToString() const { return Join(prefix, indices, indices.size()) + "."; }

Result<GridPrefix> ParseGridPrefix(std::string_view text) {
  if (text.empty() || text.back() != '.') {
    return InvalidArgumentError("grid prefix " + Quote(text) +
                                ": must end with '.', as in 'ffn.' or 'ffn.3.'");
  }
  std::vector<std::string_view> parts = SplitDots(text.substr(0, text.size() - 1));
  DMOE_RETURN_IF_ERROR(CheckPrefix(parts[0], text));
  if (parts.size() - 1 >= kMaxUidIndices) {
    return InvalidArgumentError("grid prefix " + Quote(text) +
                                ": has more than 3 indices, so no uid can extend it");
  }
  GridPrefix prefix;
  prefix.prefix = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    DMOE_ASSIGN_OR_RETURN(int64_t index, ParseIndex(parts[i], text));
    prefix.indices.push_back(index);
  }
  return prefix;
}

int64_t GridPattern::Size() const {
  int64_t size = 1;
  for (const Range& r : dims) size *= r.end - r.begin;
  return size;
}

std::vector<ExpertUid> GridPattern::Expand() const {
  std::vector<ExpertUid> out;
  out.reserve(static_cast<size_t>(Size()));
  std::vector<int64_t> current;
  for (const Range& r : dims) current.push_back(r.begin);
  if (Size() == 0) return out;
  while (true) {
    out.push_back(ExpertUid{prefix, current});
    size_t d = dims.size();
    while (d > 0) {
      --d;
      if (++current[d] < dims[d].end) break;
      current[d] = dims[d].begin;
      if (d == 0) return out;
    }
  }
}

bool GridPattern::Contains(const ExpertUid& uid) const {
  if (uid.prefix != prefix || uid.indices.size() != dims.size()) return false;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (uid.indices[i] < dims[i].begin || uid.indices[i] >= dims[i].end) return false;
  }
  return true;
}

Result<GridPattern> ParseGridPattern(std::string_view text, int64_t max_size) {
  std::string whole = "grid pattern " + Quote(text);
  // Split on dots outside brackets: a range [a:b] holds no dots anyway.
  std::vector<std::string_view> parts = SplitDots(text);
  DMOE_RETURN_IF_ERROR(CheckPrefix(parts[0], text));
  if (parts.size() < 2) {
    return InvalidArgumentError(whole + ": needs at least one dimension, as in 'ffn.[0:4].[0:8]'");
  }
  if (parts.size() - 1 > kMaxUidIndices) {
    return InvalidArgumentError(whole + ": has more than 4 dimensions");
  }
  GridPattern pattern;
  pattern.prefix = std::string(parts[0]);
  int64_t size = 1;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view part = parts[i];
    GridPattern::Range range;
    if (!part.empty() && part.front() == '[') {
      size_t colon = part.find(':');
      if (part.back() != ']' || colon == std::string_view::npos || part.size() < 4) {
        return InvalidArgumentError(whole + ": dimension '" + std::string(part) +
                                    "' must be an index or a range [begin:end]");
      }
      DMOE_ASSIGN_OR_RETURN(range.begin, ParseIndex(part.substr(1, colon - 1), text));
      DMOE_ASSIGN_OR_RETURN(int64_t end,
                            ParseIndex(part.substr(colon + 1, part.size() - colon - 2), text));
      range.end = end;
      if (range.end > kMaxUidIndex + 1) {
        return InvalidArgumentError(whole + ": range end exceeds 1000000");
      }
      if (range.end <= range.begin) {
        return InvalidArgumentError(whole + ": range '" + std::string(part) +
                                    "' is empty (ranges are half-open, end must exceed begin)");
      }
    } else {
      DMOE_ASSIGN_OR_RETURN(range.begin, ParseIndex(part, text));
      range.end = range.begin + 1;
    }
    size *= range.end - range.begin;
    if (size > max_size) {
      return InvalidArgumentError(whole + ": holds more than " + std::to_string(max_size) +
                                  " uids");
    }
    pattern.dims.push_back(range);
  }
  return pattern;
}

}  // namespace dmoe
