#include "core/uid.h"

#include <gtest/gtest.h>

namespace dmoe {
namespace {

struct Accept {
  const char* text;
  const char* prefix;
  std::vector<int64_t> indices;
};

TEST(UidTest, AcceptsWellFormedUids) {
  const Accept rows[] = {
      {"ffn.3.14", "ffn", {3, 14}},
      {"expert.5", "expert", {5}},
      {"_a.0", "_a", {0}},
      {"A-b_9.1.2.3.4", "A-b_9", {1, 2, 3, 4}},
      {"x.999999", "x", {999999}},
      {"abcdefghijabcdefghijabcdefghij12.7", "abcdefghijabcdefghijabcdefghij12", {7}},
  };
  for (const Accept& row : rows) {
    Result<ExpertUid> uid = ParseExpertUid(row.text);
    ASSERT_TRUE(uid.ok()) << row.text << ": " << uid.status().ToString();
    EXPECT_EQ(uid->prefix, row.prefix);
    EXPECT_EQ(uid->indices, row.indices);
    EXPECT_EQ(uid->ToString(), row.text);
  }
}

struct Reject {
  const char* text;
  const char* rule;  // A phrase the message must contain.
};

TEST(UidTest, RejectsMalformedUidsNamingTheRule) {
  const Reject rows[] = {
      {"", "prefix is empty"},
      {".3", "prefix is empty"},
      {"ffn", "at least one index"},
      {"ffn.", "index is empty"},
      {"ffn.3.", "index is empty"},
      {"ffn..3", "index is empty"},
      {"3ffn.1", "must start with a letter"},
      {"-ffn.1", "must start with a letter"},
      {"ff n.1", "only letters, digits"},
      {"ffn/x.1", "only letters, digits"},
      {"abcdefghijabcdefghijabcdefghij123.7", "longer than 32"},
      {"ffn.03", "leading zero"},
      {"ffn.00", "leading zero"},
      {"ffn.1000000", "above 999999"},
      {"ffn.-1", "not a decimal"},
      {"ffn.+1", "not a decimal"},
      {"ffn.1a", "not a decimal"},
      {"ffn. 1", "not a decimal"},
      {"ffn.1.2.3.4.5", "more than 4 indices"},
  };
  for (const Reject& row : rows) {
    Result<ExpertUid> uid = ParseExpertUid(row.text);
    ASSERT_FALSE(uid.ok()) << "accepted '" << row.text << "'";
    EXPECT_EQ(uid.status().code(), Code::kInvalidArgument);
    EXPECT_NE(uid.status().message().find(row.rule), std::string::npos)
        << row.text << " -> " << uid.status().message();
  }
}

TEST(UidTest, GridPrefixesOfAUid) {
  ExpertUid uid = *ParseExpertUid("ffn.3.14");
  EXPECT_EQ(uid.GridPrefixAt(0), "ffn.");
  EXPECT_EQ(uid.GridPrefixAt(1), "ffn.3.");
}

TEST(UidTest, ParsesGridPrefixes) {
  EXPECT_EQ(ParseGridPrefix("ffn.")->ToString(), "ffn.");
  EXPECT_EQ(ParseGridPrefix("ffn.3.")->indices, (std::vector<int64_t>{3}));
  EXPECT_EQ(ParseGridPrefix("ffn.3.4.5.")->ToString(), "ffn.3.4.5.");
  const Reject rows[] = {
      {"ffn", "must end with '.'"},
      {"ffn.3", "must end with '.'"},
      {"", "must end with '.'"},
      {".", "prefix is empty"},
      {"ffn..", "index is empty"},
      {"ffn.03.", "leading zero"},
      {"ffn.1.2.3.4.", "more than 3 indices"},
      {"9ffn.", "must start with a letter"},
  };
  for (const Reject& row : rows) {
    Result<GridPrefix> p = ParseGridPrefix(row.text);
    ASSERT_FALSE(p.ok()) << "accepted '" << row.text << "'";
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
    EXPECT_NE(p.status().message().find(row.rule), std::string::npos)
        << row.text << " -> " << p.status().message();
  }
}

TEST(UidTest, GridPatternExpandsHalfOpenBoxInRowMajorOrder) {
  GridPattern p = *ParseGridPattern("ffn.[0:2].[1:4]");
  EXPECT_EQ(p.Size(), 6);
  std::vector<std::string> uids;
  for (const ExpertUid& uid : p.Expand()) uids.push_back(uid.ToString());
  EXPECT_EQ(uids, (std::vector<std::string>{"ffn.0.1", "ffn.0.2", "ffn.0.3", "ffn.1.1", "ffn.1.2",
                                            "ffn.1.3"}));
  EXPECT_TRUE(p.Contains(*ParseExpertUid("ffn.1.3")));
  EXPECT_FALSE(p.Contains(*ParseExpertUid("ffn.2.1")));
  EXPECT_FALSE(p.Contains(*ParseExpertUid("ffn.1.4")));
  EXPECT_FALSE(p.Contains(*ParseExpertUid("ffn.1")));
  EXPECT_FALSE(p.Contains(*ParseExpertUid("moe.1.1")));
}

TEST(UidTest, GridPatternAcceptsSingleIndexDimensions) {
  GridPattern p = *ParseGridPattern("ffn.3.[0:2]");
  ASSERT_EQ(p.Size(), 2);
  EXPECT_EQ(p.Expand()[1].ToString(), "ffn.3.1");
}

TEST(UidTest, GridPatternRejectionsNameTheRule) {
  const Reject rows[] = {
      {"ffn", "at least one dimension"},
      {"ffn.[2:2]", "is empty"},
      {"ffn.[3:1]", "is empty"},
      {"ffn.[0:4", "index or a range"},
      {"ffn.[0-4]", "index or a range"},
      {"ffn.[:4]", "index is empty"},
      {"ffn.[01:4]", "leading zero"},
      {"ffn.[0:4].[0:4].[0:4].[0:4].[0:4]", "more than 4 dimensions"},
      {"ffn.[0:1000].[0:1000].[0:1000]", "more than"},
      {"1ffn.[0:4]", "must start with a letter"},
  };
  for (const Reject& row : rows) {
    Result<GridPattern> p = ParseGridPattern(row.text);
    ASSERT_FALSE(p.ok()) << "accepted '" << row.text << "'";
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
    EXPECT_NE(p.status().message().find(row.rule), std::string::npos)
        << row.text << " -> " << p.status().message();
  }
}

}  // namespace
}  // namespace dmoe
