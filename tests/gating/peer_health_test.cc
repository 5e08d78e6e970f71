// PeerHealth's ban policy: strikes before a ban, an unreachable peer banned at once, backoff
// doubling up to the cap, and a success clearing it all. Bans run on a FakeClock: a test moves
// time past a ban instead of waiting it out.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "core/clock.h"
#include "gating/peer_health.h"

namespace dmoe::gating {
namespace {

using namespace std::chrono_literals;

HealthOptions Options() {
  HealthOptions o;
  o.strikes_to_ban = 3;
  o.ban_base = 100s;
  o.ban_max = 300s;
  return o;
}

// How long the peer stays banned from now, in whole seconds rounded up (0 = not banned).
int64_t BanLeftS(const PeerHealth& health, const Clock& clock, const std::string& endpoint) {
  auto left = health.Get(endpoint).banned_until - clock.Now();
  if (left <= MonotonicClock::duration::zero()) return 0;
  return std::chrono::ceil<std::chrono::seconds>(left).count();
}

TEST(PeerHealthTest, AFailedRoundIsAStrikeAndTheThirdInARowBans) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string peer = "http://127.0.0.1:9";
  health.RecordFailure(peer);
  health.RecordFailure(peer);
  EXPECT_TRUE(health.Usable(peer));
  EXPECT_EQ(health.Get(peer).bans, 0);
  EXPECT_EQ(health.Get(peer).failures, 2);
  EXPECT_EQ(health.BannedNow(), 0);

  health.RecordFailure(peer);
  EXPECT_FALSE(health.Usable(peer));
  EXPECT_EQ(health.Get(peer).bans, 1);
  EXPECT_EQ(BanLeftS(health, clock, peer), 100);
  EXPECT_EQ(health.BannedNow(), 1);

  // Still failing after (or while) banned: the ban doubles, up to ban_max.
  health.RecordFailure(peer);
  EXPECT_EQ(BanLeftS(health, clock, peer), 200);
  health.RecordFailure(peer);
  EXPECT_EQ(BanLeftS(health, clock, peer), 300);
  EXPECT_EQ(health.Get(peer).bans, 3);
}

TEST(PeerHealthTest, ASuccessClearsTheStrikesAndTheBan) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string peer = "http://127.0.0.1:9";
  health.RecordFailure(peer);
  health.RecordFailure(peer);
  health.RecordSuccess(peer, 0.010);
  health.RecordFailure(peer);
  health.RecordFailure(peer);
  EXPECT_TRUE(health.Usable(peer)) << "strikes must be consecutive";

  health.RecordFailure(peer);
  ASSERT_FALSE(health.Usable(peer));
  health.RecordSuccess(peer, 0.020);
  EXPECT_TRUE(health.Usable(peer));
  EXPECT_EQ(health.Get(peer).consecutive_failures, 0);
  EXPECT_EQ(health.Get(peer).successes, 2);
  EXPECT_NEAR(health.Get(peer).latency_s, 0.8 * 0.010 + 0.2 * 0.020, 1e-12);
}

TEST(PeerHealthTest, AnUnreachablePeerIsBannedAtOnce) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string dead = "http://127.0.0.1:1", other = "http://127.0.0.1:2";
  health.RecordFailure(dead, PeerFailure::kUnreachable);
  EXPECT_FALSE(health.Usable(dead));
  EXPECT_EQ(health.Get(dead).bans, 1);
  EXPECT_EQ(BanLeftS(health, clock, dead), 100);
  EXPECT_TRUE(health.Usable(other));
  // Then it is retried and still unreachable: the ban doubles.
  health.RecordFailure(dead, PeerFailure::kUnreachable);
  EXPECT_EQ(BanLeftS(health, clock, dead), 200);
}

// A pipelined trainer has several rounds out when a server dies: they all fail together, but they
// saw one outage, so only the rounds started after the ban lengthen it.
TEST(PeerHealthTest, RoundsStartedBeforeTheBanDoNotLengthenIt) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string dead = "http://127.0.0.1:1";
  const Deadline before = clock.Now();
  clock.Advance(10ms);  // the outage is noticed a little after the rounds started
  health.RecordFailure(dead, PeerFailure::kUnreachable, before);
  ASSERT_EQ(BanLeftS(health, clock, dead), 100);
  for (int i = 0; i < 15; ++i) health.RecordFailure(dead, PeerFailure::kUnreachable, before);
  EXPECT_EQ(BanLeftS(health, clock, dead), 100);
  EXPECT_EQ(health.Get(dead).bans, 1);
  EXPECT_EQ(health.Get(dead).failures, 16);
  // A round that started after the ban (a failed probe, or a call made anyway) doubles it.
  clock.Advance(1s);
  health.RecordFailure(dead, PeerFailure::kUnreachable, clock.Now());
  EXPECT_EQ(BanLeftS(health, clock, dead), 200);
  EXPECT_EQ(health.Get(dead).bans, 2);
}

TEST(PeerHealthTest, StrikesToBanOfOneBansOnEveryFailedRound) {
  HealthOptions o = Options();
  o.strikes_to_ban = 1;
  FakeClock clock;
  PeerHealth health(clock, o);
  health.RecordFailure("http://a");
  EXPECT_FALSE(health.Usable("http://a"));
  EXPECT_EQ(BanLeftS(health, clock, "http://a"), 100);
}

// The circuit breaker's half-open state: once a ban runs out the peer is probed (once) before it
// gets calls; a passed probe readmits it, but its next failed round bans it again at once.
TEST(PeerHealthTest, AnExpiredBanNeedsAPassedProbeAndTheNextFailureBansAgainForLonger) {
  HealthOptions o;
  o.strikes_to_ban = 3;
  o.ban_base = 1s;
  o.ban_max = 100s;
  FakeClock clock;
  PeerHealth health(clock, o);
  const std::string peer = "http://127.0.0.1:9";
  for (int i = 0; i < 3; ++i) health.RecordFailure(peer);
  ASSERT_FALSE(health.Usable(peer));
  EXPECT_FALSE(health.StartProbe(peer)) << "the ban has not run out";
  clock.Advance(999ms);
  EXPECT_FALSE(health.StartProbe(peer)) << "the ban has not run out";

  clock.Advance(1ms);
  ASSERT_TRUE(health.StartProbe(peer)) << "the ban ran out";
  EXPECT_FALSE(health.Usable(peer)) << "on probation until the probe passes";
  EXPECT_FALSE(health.StartProbe(peer)) << "one probe at a time";
  EXPECT_EQ(health.Get(peer).probes, 1);
  health.RecordProbe(peer, true);
  EXPECT_TRUE(health.Usable(peer));
  EXPECT_EQ(health.Get(peer).bans, 1);

  health.RecordFailure(peer);  // one more failed round: banned at once, twice as long
  EXPECT_FALSE(health.Usable(peer));
  EXPECT_EQ(health.Get(peer).bans, 2);
  EXPECT_EQ(health.Get(peer).banned_until - clock.Now(), 2s);
}

TEST(PeerHealthTest, AFailedProbeBansAgain) {
  HealthOptions o;
  o.strikes_to_ban = 1;
  o.ban_base = 1s;
  o.ban_max = 100s;
  FakeClock clock;
  PeerHealth health(clock, o);
  const std::string peer = "http://127.0.0.1:9";
  health.RecordFailure(peer, PeerFailure::kUnreachable);
  clock.Advance(1s);
  ASSERT_TRUE(health.StartProbe(peer)) << "the ban ran out";
  health.RecordProbe(peer, false);
  EXPECT_FALSE(health.Usable(peer));
  EXPECT_FALSE(health.StartProbe(peer));
  EXPECT_EQ(health.Get(peer).bans, 2);
  EXPECT_EQ(health.Get(peer).banned_until - clock.Now(), 2s);
}

// A ban that ran out still keeps the peer out (and counted) until its probe passes.
TEST(PeerHealthTest, BannedNowCountsPeersUntilTheirProbePasses) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  health.RecordFailure("http://a", PeerFailure::kUnreachable);
  health.RecordFailure("http://b", PeerFailure::kUnreachable);
  EXPECT_EQ(health.BannedNow(), 2);
  clock.Advance(100s);
  EXPECT_EQ(health.BannedNow(), 2) << "on probation until a probe passes";
  ASSERT_TRUE(health.StartProbe("http://a"));
  health.RecordProbe("http://a", true);
  EXPECT_EQ(health.BannedNow(), 1);
  EXPECT_TRUE(health.Usable("http://a"));
  EXPECT_FALSE(health.Usable("http://b"));
}

TEST(PeerHealthTest, BansFollowThePeersKeyNotItsEndpoint) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string key = std::string(64, 'a');
  const std::string first = "http://127.0.0.1:9", second = "http://127.0.0.1:10";
  health.Bind(first, key);
  EXPECT_EQ(health.Resolve(first), key);
  EXPECT_EQ(health.Resolve(second), second);
  health.RecordFailure(first, PeerFailure::kUnreachable);
  EXPECT_FALSE(health.Usable(key));
  EXPECT_EQ(health.Get(key).bans, 1);
  // The same key, announced at a new endpoint: still banned there.
  health.Bind(second, key);
  EXPECT_FALSE(health.Usable(second));
  EXPECT_EQ(health.Get(second).bans, 1);
  EXPECT_EQ(health.BannedNow(), 1);
  // Another key at the first endpoint (a new server there) starts clean.
  health.Bind(first, std::string(64, 'b'));
  EXPECT_TRUE(health.Usable(first));
}

TEST(PeerHealthTest, BindingMovesWhatTheEndpointLearnedToTheKey) {
  FakeClock clock;
  PeerHealth health(clock, Options());
  const std::string endpoint = "http://127.0.0.1:9", key = std::string(64, 'c');
  health.RecordFailure(endpoint, PeerFailure::kUnreachable);
  ASSERT_FALSE(health.Usable(endpoint));
  health.Bind(endpoint, key);
  EXPECT_FALSE(health.Usable(key));
  EXPECT_EQ(health.Get(key).bans, 1);
  EXPECT_EQ(health.Snapshot().count(endpoint), 0u);
}

}  // namespace
}  // namespace dmoe::gating
