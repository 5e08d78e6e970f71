#include "core/integer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>

namespace dmoe {
namespace {

TEST(IntegerTest, ParsesWholeDecimalTextsWithinTheType) {
  EXPECT_EQ(ParseInteger<int64_t>("0"), 0);
  EXPECT_EQ(ParseInteger<int64_t>("1700000000000"), 1'700'000'000'000);
  EXPECT_EQ(ParseInteger<int64_t>("-42"), -42);
  EXPECT_EQ(ParseInteger<int64_t>("9223372036854775807"), INT64_MAX);
  EXPECT_EQ(ParseInteger<uint16_t>("65535"), 65535);
  EXPECT_EQ(ParseInteger<int>("007"), 7);
}

TEST(IntegerTest, RefusesAnythingButDigitsAndOutOfRangeValues) {
  for (const char* text : {"", " 1", "1 ", "+1", "1x", "x1", "0x10", "1.0", "1e3", "-"}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(ParseInteger<int64_t>(text), std::nullopt);
  }
  EXPECT_EQ(ParseInteger<int64_t>("9223372036854775808"), std::nullopt);
  EXPECT_EQ(ParseInteger<uint16_t>("65536"), std::nullopt);
  EXPECT_EQ(ParseInteger<uint16_t>("-1"), std::nullopt);
  EXPECT_EQ(ParseInteger<uint64_t>("-0"), std::nullopt);
}

}  // namespace
}  // namespace dmoe
