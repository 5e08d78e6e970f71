// Decimal integers in text that comes from outside (flags, headers, safetensors metadata, URLs,
// uids): one parser, on std::from_chars, so that every place accepts and refuses the same texts.
#ifndef DMOE_CORE_INTEGER_H_
#define DMOE_CORE_INTEGER_H_

#include <charconv>
#include <optional>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace dmoe {

// The value of `text` when all of it is a decimal integer that fits T: ASCII digits, after one
// '-' for a signed T; no '+', no spaces, nothing before or after. nullopt otherwise (empty text,
// junk, out of T's range). Locale-free, never throws; any thread.
template <class T>
std::optional<T> ParseInteger(std::string_view text) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>, "an integer type");
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

}  // namespace dmoe

#endif  // DMOE_CORE_INTEGER_H_
