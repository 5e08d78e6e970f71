#include "tensor/utf8.h"

#include <cstdint>
#include <cstdio>

namespace dmoe::safetensors::internal {

bool NextCodePoint(std::string_view s, size_t* pos, char32_t* code_point) {
  const size_t start = *pos;
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(start);
  if (lead < 0x80) {
    *code_point = lead;
    *pos = start + 1;
    return true;
  }
  size_t length = 0;
  char32_t value = 0;
  // The allowed range of the second byte; RFC 3629 narrows it after E0, ED, F0 and F4 to exclude
  // overlong forms, surrogates and values past U+10FFFF.
  uint8_t low = 0x80;
  uint8_t high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    value = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    value = lead & 0x0F;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    value = lead & 0x07;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return false;
  }
  if (s.size() - start < length) return false;
  for (size_t k = 1; k < length; ++k) {
    const uint8_t b = byte(start + k);
    if (b < low || b > high) return false;
    low = 0x80;
    high = 0xBF;
    value = (value << 6) | (b & 0x3F);
  }
  *code_point = value;
  *pos = start + length;
  return true;
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  char32_t code_point = 0;
  while (pos < s.size()) {
    if (!NextCodePoint(s, &pos, &code_point)) return false;
  }
  return true;
}

bool IsControl(char32_t code_point) {
  return code_point < 0x20 || (code_point >= 0x7F && code_point <= 0x9F);
}

std::string QuoteForMessage(std::string_view s, size_t max_bytes) {
  return "'" + EscapeForMessage(s, max_bytes) + "'";
}

std::string EscapeForMessage(std::string_view s, size_t max_bytes) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size() && pos < max_bytes) {
    size_t next = pos;
    char32_t code_point = 0;
    if (NextCodePoint(s, &next, &code_point) && !IsControl(code_point)) {
      out.append(s.substr(pos, next - pos));
      pos = next;
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", static_cast<uint8_t>(s[pos]));
      out += escaped;
      ++pos;
    }
  }
  if (pos < s.size()) out += "...";
  return out;
}

}  // namespace dmoe::safetensors::internal
