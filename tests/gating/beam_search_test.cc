// BeamSearch over a simulated DHT: random grids with random holes, dead and banned peers, checked
// against brute force over every live expert.
#include "gating/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

namespace dmoe::gating {
namespace {

using namespace std::chrono_literals;

// The records servers would announce for a set of live uids (each on endpoint "http://e<n>").
struct FakeGrid {
  std::map<std::string, std::vector<dht::Record>> keys;
  int fetches = 0;
  size_t max_keys_per_fetch = 0;

  void Announce(const std::string& prefix, const std::vector<int64_t>& coords,
                const std::string& endpoint) {
    const int64_t expiry = RealClock::Instance().NowUnixMs() + 60'000;
    auto put = [&](const std::string& key, const std::string& subkey, const std::string& value) {
      for (auto& r : keys[key])
        if (r.subkey == subkey) return;  // first publisher keeps the subkey
      dht::Record r;
      r.key = key;
      r.subkey = subkey;
      r.value = value;
      r.expiration_ms = expiry;
      keys[key].push_back(r);
    };
    std::string grid = prefix + ".";
    for (size_t d = 0; d < coords.size(); ++d) {
      put("prefix/" + grid, std::to_string(coords[d]), "{}");
      grid += std::to_string(coords[d]) + ".";
    }
    put("expert/" + UidOf(prefix, coords), endpoint, "{\"endpoint\":\"" + endpoint + "\"}");
  }

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
    ExpertDirectory directory(grid.Fetch());
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
        std::chrono::steady_clock::now() + 10s, &stats);
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
        std::chrono::steady_clock::now() + 10s);
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
  ExpertDirectory directory(grid.Fetch());
  const int64_t n = 32;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> scores(2);
  for (auto& s : scores)
    for (int64_t i = 0; i < n * 8; ++i) s.push_back(normal(rng));
  BeamSearchStats stats;
  auto chosen = BeamSearch(directory, {"ffn", {8, 8}, 4, 4}, scores, n, {},
                           std::chrono::steady_clock::now() + 10s, &stats);
  // prefix/ffn., then prefix/ffn.i. for the kept i, then expert/<uid> records.
  EXPECT_EQ(stats.rounds, 3);
  EXPECT_EQ(grid.fetches, 3);
  for (auto& c : chosen) EXPECT_EQ(c.size(), 4u);
}

TEST(BeamSearchTest, TheDeadlineBoundsTheSearch) {
  // A DHT that never answers.
  ExpertDirectory directory([](std::vector<std::string>, std::chrono::milliseconds,
                               std::function<void(ExpertDirectory::KeyResults)>) {},
                            [] {
                              DirectoryOptions o;
                              o.lookup_timeout = 100ms;
                              return o;
                            }());
  const auto start = std::chrono::steady_clock::now();
  auto chosen = BeamSearch(directory, {"ffn", {4}, 2, 2}, {std::vector<float>(4, 0.0f)}, 1, {},
                           start + 300ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  ASSERT_EQ(chosen.size(), 1u);
  EXPECT_TRUE(chosen[0].empty());
}

}  // namespace
}  // namespace dmoe::gating
