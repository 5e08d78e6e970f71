#include "net/sse.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace dmoe::net {
namespace {

// Every message of `stream` fed in the pieces that start at `cuts` (ascending offsets).
std::vector<SseMessage> ParseInPieces(std::string_view stream, const std::vector<size_t>& cuts,
                                      Status* status = nullptr, size_t max = 1 << 20) {
  SseParser parser(max);
  std::vector<SseMessage> out;
  size_t at = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(stream.size());
  for (size_t end : ends) {
    Status s = parser.Feed(stream.substr(at, end - at),
                           [&](SseMessage m) { out.push_back(std::move(m)); });
    if (!s.ok()) {
      if (status) *status = s;
      return out;
    }
    at = end;
  }
  if (status) *status = Status::Ok();
  return out;
}

std::vector<SseMessage> Parse(std::string_view stream) { return ParseInPieces(stream, {}); }

void ExpectMessages(const std::vector<SseMessage>& got, const std::vector<SseMessage>& want,
                    const std::string& context) {
  ASSERT_EQ(got.size(), want.size()) << context;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].event, want[i].event) << context << " message " << i;
    EXPECT_EQ(got[i].data, want[i].data) << context << " message " << i;
  }
}

TEST(SseTest, EventFramesEachLineAsData) {
  EXPECT_EQ(SseEvent("hello"), "data: hello\n\n");
  EXPECT_EQ(SseEvent("a\nb", "token"), "event: token\ndata: a\ndata: b\n\n");
  EXPECT_EQ(SseEvent("a\r\nb\rc\n"), "data: a\ndata: b\ndata: c\ndata: \n\n");
  EXPECT_EQ(SseEvent(""), "data: \n\n");
  EXPECT_EQ(SseEvent("x", "bad\r\nname"), "event: badname\ndata: x\n\n");
}

TEST(SseTest, ParserFollowsTheStandard) {
  // A BOM, a comment, "data:" without a space, an unknown field, id and retry (ignored), \r\n and
  // \r line ends, a field without a colon, and an event name that does not outlive its message.
  const std::string stream =
      "\xEF\xBB\xBF: keep-alive\n"
      "data:first\n"
      "data:  second line\r\n"
      "id: 7\rretry: 100\nfoo: bar\n\n"
      "event: done\n"
      "data\n\n"
      "data: after\n\n"
      "event: lonely\n\n"
      "data: unfinished\n";
  ExpectMessages(Parse(stream), {{"", "first\n second line"}, {"done", ""}, {"", "after"}},
                 "whole");
}

TEST(SseTest, RoundTripsThroughEveryCut) {
  const std::vector<SseMessage> sent = {
      {"token", "Hello"}, {"", "two\nlines"}, {"", ""}, {"end", "{\"finish\":\"stop\"}"}};
  std::string stream = "\xEF\xBB\xBF";
  for (const auto& m : sent) stream += SseEvent(m.data, m.event);
  // \r\n line ends everywhere, so that cuts fall between \r and \n too.
  std::string crlf;
  for (char c : stream) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  for (const std::string& s : {stream, crlf}) {
    ExpectMessages(Parse(s), sent, "whole");
    for (size_t cut = 0; cut <= s.size(); ++cut) {
      ExpectMessages(ParseInPieces(s, {cut}), sent, "cut at " + std::to_string(cut));
    }
    std::vector<size_t> bytes;
    for (size_t i = 1; i < s.size(); ++i) bytes.push_back(i);
    ExpectMessages(ParseInPieces(s, bytes), sent, "byte by byte");
  }
}

TEST(SseTest, BomPrefixThatIsNotABomIsData) {
  // "\xEF\xBB" followed by something else starts the first line; a field named so is unknown.
  ExpectMessages(ParseInPieces("\xEF\xBB"
                               "data: x\n\ndata: y\n\n",
                               {1, 2}),
                 {{"", "y"}}, "split");
}

TEST(SseTest, LimitsRefuseLongDataAndLines) {
  const size_t max = 16;
  Status status;
  // Exactly max bytes of data, over two lines, pass.
  auto ok = ParseInPieces("data: 1234567\ndata: 12345678\n\n", {5}, &status, max);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ExpectMessages(ok, {{"", "1234567\n12345678"}}, "at the limit");
  // One byte more does not.
  ParseInPieces("data: 1234567\ndata: 123456789\n\n", {5}, &status, max);
  EXPECT_EQ(status.code(), Code::kInvalidArgument);
  EXPECT_NE(status.message().find("16 bytes"), std::string::npos) << status.message();
  // A line without an end, longer than max + room for a field name, fails before it ends.
  const std::string comment = ":" + std::string(max + SseParser::kMaxFieldNameBytes, 'c');
  ParseInPieces(comment, {10, 40}, &status, max);
  EXPECT_EQ(status.code(), Code::kInvalidArgument);
  // A failed parser stays failed.
  SseParser parser(max);
  ASSERT_FALSE(parser.Feed(comment, [](SseMessage) {}).ok());
  int calls = 0;
  Status again = parser.Feed("data: x\n\n", [&](SseMessage) { ++calls; });
  EXPECT_EQ(again.code(), Code::kInvalidArgument);
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace dmoe::net
