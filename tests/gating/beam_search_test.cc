// BeamSearch over a simulated DHT: random grids with random holes, dead and banned peers, checked
// against brute force over every live expert.
#include "gating/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "core/clock.h"

namespace dmoe::gating {
namespace {

using namespace std::chrono_literals;

// The records servers would announce for a set of live uids (each on endpoint "http://e<n>").
struct FakeGrid {
  FakeClock clock;  // the directory's: records expire and deadlines pass only as the test says
  std::map<std::string, std::vector<dht::Record>> keys;
  int fetches = 0;
  size_t max_keys_per_fetch = 0;

  void Announce(const std::string& prefix, const std::vector<int64_t>& coords,
                const std::string& endpoint) {
    const int64_t expiry = clock.NowUnixMs() + 60'000;
    auto put = [&](const std::string& key, const std::string& subkey, const std::string& value,
                   PublicKey publisher = {}) {
      for (auto& r : keys[key])
        if (r.subkey == subkey) return;  // first publisher keeps the subkey
      dht::Record r;
      r.key = key;
      r.subkey = subkey;
      r.value = value;
      r.expiration_ms = expiry;
      r.publisher = publisher;
      keys[key].push_back(r);
    };
    std::string grid = prefix + ".";
    for (size_t d = 0; d < coords.size(); ++d) {
      put("prefix/" + grid, std::to_string(coords[d]), "{}");
      grid += std::to_string(coords[d]) + ".";
    }
    const Identity& id = IdentityOf(endpoint);
    put("expert/" + UidOf(prefix, coords), id.peer_id(), "{\"endpoint\":\"" + endpoint + "\"}",
        id.public_key());
  }

  // One publisher key per endpoint, derived from its name.
  const Identity& IdentityOf(const std::string& endpoint) {
    auto it = identities.find(endpoint);
    if (it == identities.end()) {
      Hash256 seed = Blake2b256(endpoint);
      it = identities.emplace(endpoint, Identity::FromSeed(seed)).first;
    }
    return it->second;
  }
  std::map<std::string, Identity> identities;

  ExpertDirectory::FetchFn Fetch() {
    return [this](std::vector<std::string> wanted, std::chrono::milliseconds,
                  std::function<void(ExpertDirectory::KeyResults)> done) {
      ++fetches;
      max_keys_per_fetch = std::max(max_keys_per_fetch, wanted.size());
      ExpertDirectory::KeyResults results;
      for (const std::string& key : wanted) {
        dht::KeyResult r{key, NotFoundError("none"), {}, 1, 1};
        auto it = keys.find(key);
        if (it != keys.end()) {
          r.status = Status::Ok();
          r.records = it->second;
        }
        results.push_back(std::move(r));
      }
      done(std::move(results));
    };
  }
};

TEST(BeamSearchTest, ReturnsTheBruteForceTopKOfLiveExpertsOnRandomGridsWithHoles) {
  std::mt19937_64 rng(42);
  int trials = 0, rounds_total = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const size_t dims = 1 + trial % 3;
    std::vector<int64_t> grid_size;
    for (size_t d = 0; d < dims; ++d) grid_size.push_back(2 + rng() % 6);
    // Every uid of the box, each live with probability 0.5 on one of 5 endpoints.
    std::vector<std::vector<int64_t>> all = {{}};
    for (size_t d = 0; d < dims; ++d) {
      std::vector<std::vector<int64_t>> next;
      for (auto& c : all)
        for (int64_t i = 0; i < grid_size[d]; ++i) {
          next.push_back(c);
          next.back().push_back(i);
        }
      all = std::move(next);
    }
    FakeGrid grid;
    std::map<std::string, std::string> endpoint_of;
    for (auto& coords : all) {
      if (rng() % 2) continue;
      std::string endpoint = "http://e" + std::to_string(rng() % 5);
      grid.Announce("ffn", coords, endpoint);
      endpoint_of[UidOf("ffn", coords)] = endpoint;
    }
    // A peer that is banned: announced, but not usable.
    const std::string banned = "http://e4";
    ExpertDirectory directory(grid.Fetch(), grid.clock);
    const int64_t n = 6;
    const int k = 1 + static_cast<int>(rng() % 5);
    std::vector<std::vector<float>> scores(dims);
    std::normal_distribution<float> normal;
    for (size_t d = 0; d < dims; ++d)
      for (int64_t i = 0; i < n * grid_size[d]; ++i) scores[d].push_back(normal(rng));
    BeamSearchOptions options{"ffn", grid_size, k, 2};
    BeamSearchStats stats;
    auto chosen = BeamSearch(
        directory, options, scores, n, [&](const std::string& e) { return e != banned; },
        grid.clock.Now() + 10s, &stats);
    rounds_total += stats.rounds;
    ASSERT_EQ(chosen.size(), static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      std::vector<std::pair<float, std::string>> live;
      for (auto& coords : all) {
        std::string uid = UidOf("ffn", coords);
        if (!endpoint_of.count(uid) || endpoint_of[uid] == banned) continue;
        float s = 0;
        for (size_t d = 0; d < dims; ++d) s += scores[d][i * grid_size[d] + coords[d]];
        live.emplace_back(s, uid);
      }
      std::sort(live.begin(), live.end(), std::greater<>());
      const size_t expected = std::min<size_t>(k, live.size());
      ASSERT_EQ(chosen[i].size(), expected) << "trial " << trial << " sample " << i;
      for (size_t j = 0; j < expected; ++j) {
        EXPECT_EQ(chosen[i][j].uid, live[j].second) << "trial " << trial << " sample " << i;
        EXPECT_FLOAT_EQ(chosen[i][j].score, live[j].first);
        EXPECT_EQ(chosen[i][j].endpoint, endpoint_of[live[j].second]);
      }
    }
    // The cache answers a repeated search without the DHT.
    const int before = grid.fetches;
    BeamSearch(
        directory, options, scores, n, [&](const std::string& e) { return e != banned; },
        grid.clock.Now() + 10s);
    EXPECT_EQ(grid.fetches, before);
    ++trials;
  }
  std::printf("beam search: %d random grids exact; %.2f DHT rounds per search on average\n", trials,
              static_cast<double>(rounds_total) / trials);
}

TEST(BeamSearchTest, OneBatchedLookupPerGridLevelOnAFullGrid) {
  FakeGrid grid;
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < 8; ++j) grid.Announce("ffn", {i, j}, "http://e");
  ExpertDirectory directory(grid.Fetch(), grid.clock);
  const int64_t n = 32;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> scores(2);
  for (auto& s : scores)
    for (int64_t i = 0; i < n * 8; ++i) s.push_back(normal(rng));
  BeamSearchStats stats;
  auto chosen = BeamSearch(directory, {"ffn", {8, 8}, 4, 4}, scores, n, EndpointFilter{},
                           grid.clock.Now() + 10s, &stats);
  // prefix/ffn., then prefix/ffn.i. for the kept i, then expert/<uid> records.
  EXPECT_EQ(stats.rounds, 3);
  EXPECT_EQ(grid.fetches, 3);
  for (auto& c : chosen) EXPECT_EQ(c.size(), 4u);
}

TEST(BeamSearchTest, TheDeadlineBoundsTheSearch) {
  // A DHT that never answers, on the real clock: the wait for it ends in real time.
  const Clock& clock = RealClock::Instance();
  ExpertDirectory directory([](std::vector<std::string>, std::chrono::milliseconds,
                               std::function<void(ExpertDirectory::KeyResults)>) {},
                            clock,
                            [] {
                              DirectoryOptions o;
                              o.lookup_timeout = 100ms;
                              return o;
                            }());
  const Deadline start = clock.Now();
  auto chosen = BeamSearch(directory, {"ffn", {4}, 2, 2}, {std::vector<float>(4, 0.0f)}, 1,
                           EndpointFilter{}, start + 300ms);
  EXPECT_LT(clock.Now() - start, 2s);
  ASSERT_EQ(chosen.size(), 1u);
  EXPECT_TRUE(chosen[0].empty());
}

// The search reads the time on its directory's clock: a lookup during which that clock passes the
// deadline is the last one, however little real time went by.
TEST(BeamSearchTest, TheDeadlineIsOnTheDirectorysClock) {
  FakeGrid grid;
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 4; ++j) grid.Announce("ffn", {i, j}, "http://e");
  const Deadline deadline = grid.clock.Now() + 5s;
  ExpertDirectory::FetchFn slow = [&grid, fetch = grid.Fetch()](
                                      std::vector<std::string> keys, std::chrono::milliseconds t,
                                      std::function<void(ExpertDirectory::KeyResults)> done) {
    grid.clock.Advance(6s);  // this lookup took (fake) time past the deadline
    fetch(std::move(keys), t, std::move(done));
  };
  ExpertDirectory directory(slow, grid.clock);
  BeamSearchStats stats;
  auto chosen = BeamSearch(directory, {"ffn", {4, 4}, 2, 2},
                           {std::vector<float>(4, 0.0f), std::vector<float>(4, 0.0f)}, 1,
                           EndpointFilter{}, deadline, &stats);
  EXPECT_EQ(grid.fetches, 1) << "prefix/ffn. only: the second level is past the deadline";
  EXPECT_EQ(stats.rounds, 1);
  EXPECT_TRUE(stats.deadline_hit);
  ASSERT_EQ(chosen.size(), 1u);
  EXPECT_TRUE(chosen[0].empty());
}

// An `expert/<uid>` record as a publisher would store it.
dht::Record ExpertRecord(const std::string& uid, const Identity& publisher,
                         const std::string& endpoint, int64_t expiry_ms, std::string subkey = "") {
  dht::Record r;
  r.key = "expert/" + uid;
  r.subkey = subkey.empty() ? publisher.peer_id() : subkey;
  r.value = "{\"endpoint\":\"" + endpoint + "\"}";
  r.expiration_ms = expiry_ms;
  r.publisher = publisher.public_key();
  return r;
}

dht::Record PrefixRecord(const std::string& key, const std::string& subkey,
                         const Identity& publisher, int64_t expiry_ms) {
  dht::Record r;
  r.key = key;
  r.subkey = subkey;
  r.value = "{}";
  r.expiration_ms = expiry_ms;
  r.publisher = publisher.public_key();
  return r;
}

ExpertDirectory::FetchFn FetchFrom(std::map<std::string, std::vector<dht::Record>> keys) {
  return [keys](std::vector<std::string> wanted, std::chrono::milliseconds,
                std::function<void(ExpertDirectory::KeyResults)> done) {
    ExpertDirectory::KeyResults results;
    for (const std::string& key : wanted) {
      auto it = keys.find(key);
      results.push_back({key, it == keys.end() ? NotFoundError("none") : Status::Ok(),
                         it == keys.end() ? std::vector<dht::Record>{} : it->second, 1, 1});
    }
    done(std::move(results));
  };
}

TEST(ReplicaTest, ReplicasOfKeepsEveryPublisherAndDropsForeignSubkeys) {
  FakeClock clock;
  Identity honest = Identity::Generate(), stranger = Identity::Generate();
  const int64_t expiry = clock.NowUnixMs() + 45'000;
  std::vector<Replica> replicas = ReplicasOf({
      ExpertRecord("ffn.1", honest, "http://honest", expiry),
      ExpertRecord("ffn.1", stranger, "http://stranger", expiry + 555'000),
      // The stranger claims the honest server's subkey: not its own, so ignored.
      ExpertRecord("ffn.1", stranger, "http://stranger2", expiry, honest.peer_id()),
  });
  ASSERT_EQ(replicas.size(), 2u);
  EXPECT_EQ(replicas[0].endpoint, "http://honest");
  EXPECT_EQ(replicas[0].peer_id, honest.peer_id());
  EXPECT_EQ(replicas[0].publisher, honest.public_key());
  EXPECT_EQ(replicas[1].endpoint, "http://stranger");
}

TEST(ReplicaTest, TheSearchChoosesByCostNeverByExpiry) {
  FakeClock clock;
  Identity honest = Identity::Generate(), stranger = Identity::Generate();
  const int64_t now = clock.NowUnixMs();
  ExpertDirectory directory(
      FetchFrom({
          {"prefix/ffn.", {PrefixRecord("prefix/ffn.", "0", honest, now + 60'000)}},
          {"expert/ffn.0",
           {ExpertRecord("ffn.0", honest, "http://honest", now + 45'000),
            ExpertRecord("ffn.0", stranger, "http://stranger", now + 600'000)}},
      }),
      clock);
  ReplicaPolicy policy;
  policy.cost = [&](const Replica& r) { return r.peer_id == honest.peer_id() ? 0.01 : 0.5; };
  auto chosen = BeamSearch(directory, {"ffn", {1}, 1, 1}, {{1.0f}}, 1, policy, clock.Now() + 5s);
  ASSERT_EQ(chosen[0].size(), 1u);
  EXPECT_EQ(chosen[0][0].endpoint, "http://honest");
  EXPECT_EQ(chosen[0][0].peer_id, honest.peer_id());
  // When the honest one is unusable, the other replica serves.
  policy.check = [&](const Replica& r) {
    return r.peer_id == honest.peer_id() ? Usability::kUnusable : Usability::kUsable;
  };
  chosen = BeamSearch(directory, {"ffn", {1}, 1, 1}, {{1.0f}}, 1, policy, clock.Now() + 5s);
  ASSERT_EQ(chosen[0].size(), 1u);
  EXPECT_EQ(chosen[0][0].endpoint, "http://stranger");
}

TEST(ReplicaTest, PendingReplicasAreResolvedInOneBatchPerRound) {
  FakeClock clock;
  std::vector<Identity> servers;
  std::map<std::string, std::vector<dht::Record>> keys;
  const int64_t expiry = clock.NowUnixMs() + 45'000;
  for (int i = 0; i < 4; ++i) {
    servers.push_back(Identity::Generate());
    keys["prefix/ffn."].push_back(
        PrefixRecord("prefix/ffn.", std::to_string(i), servers[i], expiry));
    keys["expert/ffn." + std::to_string(i)].push_back(ExpertRecord(
        "ffn." + std::to_string(i), servers[i], "http://e" + std::to_string(i), expiry));
  }
  ExpertDirectory directory(FetchFrom(keys), clock);
  std::set<std::string> proven, lying = {servers[2].peer_id()};
  int resolves = 0;
  size_t resolved = 0;
  ReplicaPolicy policy;
  policy.check = [&](const Replica& r) {
    if (lying.count(r.peer_id)) return Usability::kUnusable;
    return proven.count(r.peer_id) ? Usability::kUsable : Usability::kPending;
  };
  policy.resolve = [&](const std::vector<Replica>& replicas, Deadline) {
    ++resolves;
    resolved += replicas.size();
    for (const Replica& r : replicas) proven.insert(r.peer_id);
  };
  auto chosen = BeamSearch(directory, {"ffn", {4}, 4, 4}, {{0.4f, 0.3f, 0.2f, 0.1f}}, 1, policy,
                           clock.Now() + 5s);
  EXPECT_EQ(resolves, 1);
  EXPECT_EQ(resolved, 3u);
  ASSERT_EQ(chosen[0].size(), 3u);
  EXPECT_EQ(chosen[0][0].uid, "ffn.0");
  EXPECT_EQ(chosen[0][1].uid, "ffn.1");
  EXPECT_EQ(chosen[0][2].uid, "ffn.3");
}

TEST(ReplicaTest, PrefixRecordsAreMergedAndFilteredByPublisher) {
  FakeClock clock;
  Identity honest = Identity::Generate(), stranger = Identity::Generate();
  const int64_t expiry = clock.NowUnixMs() + 45'000;
  // The stranger's prefix record names a coordinate nobody serves; the row stays visible.
  ExpertDirectory directory(
      FetchFrom({
          {"prefix/ffn.",
           {PrefixRecord("prefix/ffn.", "0", stranger, expiry),
            PrefixRecord("prefix/ffn.", "1", honest, expiry)}},
          {"expert/ffn.1", {ExpertRecord("ffn.1", honest, "http://honest", expiry)}},
      }),
      clock);
  auto chosen = BeamSearch(directory, {"ffn", {2}, 2, 2}, {{1.0f, 0.0f}}, 1, ReplicaPolicy{},
                           clock.Now() + 5s);
  ASSERT_EQ(chosen[0].size(), 1u);
  EXPECT_EQ(chosen[0][0].uid, "ffn.1");
  // With a publisher filter, only the honest key's prefixes count.
  ReplicaPolicy listed;
  int asked_about_stranger = 0;
  listed.publisher_allowed = [&](const PublicKey& k) {
    asked_about_stranger += k == stranger.public_key();
    return k == honest.public_key();
  };
  chosen = BeamSearch(directory, {"ffn", {2}, 2, 2}, {{1.0f, 0.0f}}, 1, listed, clock.Now() + 5s);
  ASSERT_EQ(chosen[0].size(), 1u);
  EXPECT_EQ(chosen[0][0].uid, "ffn.1");
  EXPECT_GE(asked_about_stranger, 1);
}

}  // namespace
}  // namespace dmoe::gating
