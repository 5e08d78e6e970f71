#include "data/data_source.h"

namespace dmoe::data {
namespace {

constexpr std::string_view kTextPrefix = "text:";
constexpr std::string_view kExpected = "expected fashion-mnist, kjv or text:FILE";

// `value` in single quotes for a message: bytes outside printable ASCII as \xNN, at most 64 bytes
// of it, then "...".
std::string Quote(std::string_view value) {
  constexpr size_t kShown = 64;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < value.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  if (value.size() > kShown) out += "...";
  return out + "'";
}

}  // namespace

bool IsTextSource(DataSource source) {
  return source == DataSource::kKjv || source == DataSource::kTextFile;
}

Result<DataSpec> ParseDataSpec(std::string_view value) {
  if (value.size() > kMaxDataValueBytes) {
    return InvalidArgumentError("--data: the value has " + std::to_string(value.size()) +
                                " bytes, at most " + std::to_string(kMaxDataValueBytes) +
                                " allowed");
  }
  if (value == "fashion-mnist") return DataSpec{DataSource::kFashionMnist, ""};
  if (value == "kjv") return DataSpec{DataSource::kKjv, ""};
  if (!value.starts_with(kTextPrefix)) {
    return InvalidArgumentError("--data " + Quote(value) + ": " + std::string(kExpected));
  }
  const std::string_view path = value.substr(kTextPrefix.size());
  if (path.empty()) return InvalidArgumentError("--data text:FILE: FILE is empty");
  if (path.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("--data " + Quote(value) + ": FILE contains a NUL byte");
  }
  return DataSpec{DataSource::kTextFile, std::string(path)};
}

}  // namespace dmoe::data
