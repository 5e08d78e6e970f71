// UTF-8 checks used by the safetensors codec (PROTOCOL section 2: names are printable UTF-8, every
// string is valid UTF-8). Internal to the tensor module; other modules should not include it.
#ifndef DMOE_TENSOR_UTF8_H_
#define DMOE_TENSOR_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace dmoe::safetensors::internal {

// Decodes the code point that starts at s[*pos] into *code_point and advances *pos past it. Returns
// false, leaving *pos unchanged, when the bytes there are not well-formed UTF-8 in the sense of
// RFC 3629 (overlong forms, UTF-16 surrogates and values past U+10FFFF are ill-formed).
// Requires *pos < s.size().
bool NextCodePoint(std::string_view s, size_t* pos, char32_t* code_point);

// True when all of `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s);

// True for a C0 or C1 control character or DEL (U+0000..U+001F, U+007F..U+009F).
bool IsControl(char32_t code_point);

// `s` in single quotes for an error message: control characters and bytes that are not UTF-8 are
// written as \xNN, and anything past `max_bytes` is cut and replaced by "...". The result is always
// valid UTF-8, so it can go into a JSON error body.
std::string QuoteForMessage(std::string_view s, size_t max_bytes = 64);
// The same without the quotes.
std::string EscapeForMessage(std::string_view s, size_t max_bytes);

}  // namespace dmoe::safetensors::internal

#endif  // DMOE_TENSOR_UTF8_H_
