#include "data/byte_tokenizer.h"

namespace dmoe::data {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

std::vector<Token> EncodeBytes(std::string_view text) {
  std::vector<Token> tokens(text.size());
  for (size_t i = 0; i < text.size(); ++i) tokens[i] = static_cast<unsigned char>(text[i]);
  return tokens;
}

Result<std::string> DecodeBytes(std::span<const Token> tokens) {
  std::string bytes(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= kByteVocabSize) {
      return InvalidArgumentError("token " + std::to_string(tokens[i]) + " at position " +
                                  std::to_string(i) + " is not a byte token (0..255)");
    }
    bytes[i] = static_cast<char>(tokens[i]);
  }
  return bytes;
}

void Utf8StreamDecoder::Reset() {
  seen_ = 0;
  needed_ = 0;
  lower_ = 0x80;
  upper_ = 0xBF;
}

bool Utf8StreamDecoder::Feed(uint8_t b, std::string* out) {
  if (needed_ == 0) {
    if (b <= 0x7F) {
      *out += static_cast<char>(b);
      return true;
    }
    if (b >= 0xC2 && b <= 0xDF) {
      needed_ = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      if (b == 0xE0) lower_ = 0xA0;  // no overlong three-byte forms
      if (b == 0xED) upper_ = 0x9F;  // no UTF-16 surrogates
      needed_ = 3;
    } else if (b >= 0xF0 && b <= 0xF4) {
      if (b == 0xF0) lower_ = 0x90;  // no overlong four-byte forms
      if (b == 0xF4) upper_ = 0x8F;  // nothing past U+10FFFF
      needed_ = 4;
    } else {
      *out += kReplacement;  // a continuation byte, C0, C1 or F5..FF where a character starts
      return true;
    }
    bytes_[seen_++] = static_cast<char>(b);
    return true;
  }
  if (b < lower_ || b > upper_) {
    // What came before is one ill-formed subpart; this byte is not consumed and starts over.
    Reset();
    *out += kReplacement;
    return false;
  }
  lower_ = 0x80;
  upper_ = 0xBF;
  bytes_[seen_++] = static_cast<char>(b);
  if (seen_ == needed_) {
    out->append(bytes_, seen_);
    Reset();
  }
  return true;
}

std::string Utf8StreamDecoder::Push(std::string_view bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    if (Feed(static_cast<uint8_t>(bytes[i]), &out)) ++i;
  }
  return out;
}

std::string Utf8StreamDecoder::Finish() {
  if (needed_ == 0) return "";
  Reset();
  return std::string(kReplacement);
}

std::string DecodeUtf8Lossy(std::string_view bytes) {
  Utf8StreamDecoder decoder;
  std::string text = decoder.Push(bytes);
  return text + decoder.Finish();
}

}  // namespace dmoe::data
