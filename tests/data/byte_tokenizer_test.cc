#include "data/byte_tokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace dmoe::data {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";  // U+FFFD, the replacement character

TEST(ByteTokenizerTest, EveryByteIsItsOwnToken) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::vector<Token> tokens = EncodeBytes(all);
  ASSERT_EQ(tokens.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tokens[b], b);
  Result<std::string> back = DecodeBytes(tokens);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, all);
  EXPECT_EQ(EncodeBytes("h\xc3\xa9"), (std::vector<Token>{104, 195, 169}));
  EXPECT_TRUE(EncodeBytes("").empty());
}

TEST(ByteTokenizerTest, DecodeRefusesTokensOutsideTheVocabulary) {
  Result<std::string> high = DecodeBytes(std::vector<Token>{65, 256});
  ASSERT_EQ(high.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(high.status().message(), "token 256 at position 1 is not a byte token (0..255)");
  EXPECT_EQ(DecodeBytes(std::vector<Token>{-1}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(*DecodeBytes(std::vector<Token>{}), "");
}

// Feeds `bytes` one byte at a time and returns what each Push gave.
std::vector<std::string> PushEachByte(Utf8StreamDecoder& d, std::string_view bytes) {
  std::vector<std::string> pieces;
  for (char c : bytes) pieces.push_back(d.Push(std::string_view(&c, 1)));
  return pieces;
}

TEST(Utf8StreamDecoderTest, HoldsMultiByteCharactersUntilTheirLastByte) {
  Utf8StreamDecoder d;
  // "a", "é" (2 bytes), "€" (3 bytes), "😀" (4 bytes), "b", one token per byte.
  const std::string text =
      "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"
      "b";
  std::vector<std::string> pieces = PushEachByte(d, text);
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "\xC3\xA9", "", "", "\xE2\x82\xAC", "", "",
                                              "", "\xF0\x9F\x98\x80", "b"}));
  EXPECT_EQ(d.pending(), 0);
  EXPECT_EQ(d.Finish(), "");
}

TEST(Utf8StreamDecoderTest, ReportsPendingBytesAndCompletesAcrossPushes) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.Push("x\xF0\x9F"), "x");
  EXPECT_EQ(d.pending(), 2);
  EXPECT_EQ(d.Push("\x98"), "");
  EXPECT_EQ(d.pending(), 3);
  EXPECT_EQ(d.Push("\x80\xE2\x82"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(d.pending(), 2);
  EXPECT_EQ(d.Push("\xAC!"), "\xE2\x82\xAC!");
}

TEST(Utf8StreamDecoderTest, ReplacesIllFormedBytesAsTheWhatwgDecoderDoes) {
  // Expected values are Python's bytes.decode("utf-8", "replace"), which follows the same
  // one-U+FFFD-per-maximal-subpart practice.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\x80", kFffd},  // a lone continuation byte
      {"\xFF", kFffd},  // never in UTF-8
      {"\xC3"
       "A",
       kFffd + "A"},                                        // cut short: "A" is kept
      {"\xC0\xAF", kFffd + kFffd},                          // overlong "/"
      {"\xE0\x80", kFffd + kFffd},                          // overlong three-byte start
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},              // UTF-16 surrogate U+D800
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // past U+10FFFF
      {"\xF0\x9F\x98"
       "A",
       kFffd + "A"},  // one subpart of three bytes
      {"\xE2\x82\xF0\x9F\x98\x80", kFffd + "\xF0\x9F\x98\x80"},
  };
  for (const auto& [in, want] : cases) {
    EXPECT_EQ(DecodeUtf8Lossy(in), want) << testing::PrintToString(in);
    // Byte by byte gives the same text.
    Utf8StreamDecoder d;
    std::string joined;
    for (const std::string& piece : PushEachByte(d, in)) joined += piece;
    EXPECT_EQ(joined + d.Finish(), want) << testing::PrintToString(in);
  }
}

TEST(Utf8StreamDecoderTest, FinishReplacesAnIncompleteCharacterAndResets) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.Push("ok\xE2\x82"), "ok");
  EXPECT_EQ(d.Finish(), kFffd);
  EXPECT_EQ(d.pending(), 0);
  EXPECT_EQ(d.Push("\xAC"), kFffd);  // a new stream: a lone continuation byte
  EXPECT_EQ(d.Finish(), "");
}

TEST(Utf8StreamDecoderTest, EverySplitOfAStreamGivesTheSameText) {
  const std::string stream = "\xCE\xBB\xE2\x82\xAC\x80\xF0\x9F\x98\x80\xED\xA0z\xC3";
  const std::string whole = DecodeUtf8Lossy(stream);
  EXPECT_EQ(whole,
            "\xCE\xBB\xE2\x82\xAC" + kFffd + "\xF0\x9F\x98\x80" + kFffd + kFffd + "z" + kFffd);
  for (size_t cut1 = 0; cut1 <= stream.size(); ++cut1) {
    for (size_t cut2 = cut1; cut2 <= stream.size(); ++cut2) {
      Utf8StreamDecoder d;
      std::string text = d.Push(std::string_view(stream).substr(0, cut1));
      text += d.Push(std::string_view(stream).substr(cut1, cut2 - cut1));
      text += d.Push(std::string_view(stream).substr(cut2));
      EXPECT_EQ(text + d.Finish(), whole) << cut1 << " " << cut2;
    }
  }
}

}  // namespace
}  // namespace dmoe::data
