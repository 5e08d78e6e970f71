#include "dht/announcement.h"

#include <gtest/gtest.h>

namespace dmoe::dht {
namespace {

TEST(AnnouncementTest, KeysFollowTheProtocol) {
  EXPECT_EQ(ExpertKey("ffn.3.14"), "expert/ffn.3.14");
  EXPECT_EQ(PrefixKey("ffn.3."), "prefix/ffn.3.");
}

TEST(AnnouncementTest, ExpertAnnouncementRoundTrips) {
  ExpertAnnouncement a{"http://127.0.0.1:8080", 42, 0.25, "ffn", 1024};
  Result<ExpertAnnouncement> b = ExpertAnnouncement::Parse(a.ToJson());
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->endpoint, a.endpoint);
  EXPECT_EQ(b->step, 42);
  EXPECT_DOUBLE_EQ(b->load, 0.25);
  EXPECT_EQ(b->type, "ffn");
  EXPECT_EQ(b->hidden_dim, 1024);
}

TEST(AnnouncementTest, ForgedOrForeignValuesAreRefusedNotFatal) {
  for (const char* bad : {"", "[]", "{}", "not json", "{\"endpoint\":5}",
                          "{\"endpoint\":\"ftp://x\"}", "{\"endpoint\":\"http://x\"", "null"}) {
    Result<ExpertAnnouncement> r = ExpertAnnouncement::Parse(bad);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
  }
  // Unknown or mistyped optional fields are ignored.
  auto r = ExpertAnnouncement::Parse("{\"endpoint\":\"http://h:1\",\"step\":\"x\",\"extra\":1}");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->step, 0);
}

TEST(AnnouncementTest, PrefixEntryRoundTripsAndRefusesGarbage) {
  PrefixEntry e{"ffn.3.14", "abcd"};
  Result<PrefixEntry> r = PrefixEntry::Parse(e.ToJson());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->uid, "ffn.3.14");
  EXPECT_EQ(r->peer_id, "abcd");
  EXPECT_EQ(PrefixEntry::Parse("{\"uid\":1}").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace dmoe::dht
