// The seed idea across processes: four real dmoe-server processes on a 4x4 grid (server s hosts
// ffn.[0:4].s); one is SIGSTOPped, one SIGKILLed, one answers NaN. The layer must stop waiting
// timeout_after_k_min after k_min (not at its deadline), renormalize over the responders, ban the
// failing peers, and use the stopped server again once it is continued and its ban has expired.
// The swarm's clock is real time that the test skips ahead, so no ban is waited out.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "expert_server/expert.h"
#include "gating/gating.h"
#include "tests/testing/processes.h"

namespace dmoe::gating {
namespace {

using namespace std::chrono_literals;
constexpr int64_t kDim = 16;
constexpr char kSeed[] = "7";

// Real time, except that the test can move the monotonic reading ahead: the servers answer in
// real time, and a ban runs out when the test skips past it. Thread-safe.
class SkippingClock final : public Clock {
 public:
  int64_t NowUnixMs() const override { return RealClock::Instance().NowUnixMs(); }
  int64_t NowMonotonicUs() const override {
    return RealClock::Instance().NowMonotonicUs() + skipped_us_.load();
  }
  void Skip(MonotonicClock::duration d) { skipped_us_ += d.count(); }

 private:
  std::atomic<int64_t> skipped_us_{0};
};

at::Tensor LocalFfn(const std::string& uid, const at::Tensor& x) {
  expert_server::ExpertConfig config;
  config.hidden_dim = kDim;
  config.seed = 7;
  auto expert = std::move(expert_server::Expert::Create(
                              expert_server::ExpertRegistry::WithBuiltins(), uid, config, {}))
                    .value();
  std::map<std::string, at::Tensor> p;
  for (auto& [name, t] : expert->Parameters()) p[name] = t.detach();
  at::Tensor h = at::gelu(at::linear(x, p["linear1.weight"], p["linear1.bias"]));
  return at::layer_norm(x + at::linear(h, p["linear2.weight"], p["linear2.bias"]), {kDim},
                        p["norm.weight"], p["norm.bias"], 1e-5);
}

TEST(GatingExclusionTest, StoppedKilledAndNanServersAreExcludedBannedAndTheStoppedOneReturns) {
  auto dht_process = testing::StartDht();
  ASSERT_TRUE(dht_process.ok()) << dht_process.status().ToString();
  const std::string dht_address = dht_process->address;

  std::vector<std::vector<std::string>> flags;
  for (int s = 0; s < 4; ++s) {
    flags.push_back({"--experts", "ffn.[0:4]." + std::to_string(s), "--hidden-dim",
                     std::to_string(kDim), "--seed", kSeed, "--dht", dht_address, "--dht-listen",
                     "127.0.0.1:0", "--announce-every", "2", "--threads", "1"});
    if (s == 2) flags.back().insert(flags.back().end(), {"--nan-rate", "1"});
  }
  auto started = testing::StartServers(flags, 90s);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::vector<std::unique_ptr<testing::Process>> servers;
  std::vector<std::string> endpoints;
  for (testing::ServerProcess& server : *started) {
    servers.push_back(std::move(server.process));
    endpoints.push_back(server.endpoint);
  }

  dht::DhtOptions options;
  options.clock = &RealClock::Instance();
  options.listen = "127.0.0.1:0";
  options.bootstrap = {dht_address};
  options.node.client = true;
  options.node.get_quorum = 5;
  auto client = dht::Dht::Start(std::move(options));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  ASSERT_TRUE((*client)->WaitBootstrapped(10s).ok());
  std::vector<std::string> keys = {"prefix/ffn."};
  for (int i = 0; i < 4; ++i) keys.push_back("prefix/ffn." + std::to_string(i) + ".");
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        // Four coordinates per key; one coordinate may be announced by several servers, whose
        // records sit side by side (docs/protocol.md section 6).
        for (const auto& r : (*client)->GetManyBlocking(keys, 2s)) {
          std::set<std::string> coordinates;
          for (const auto& rec : r.records) coordinates.insert(rec.subkey);
          if (coordinates.size() != 4) return false;
        }
        return true;
      },
      60s))
      << "the grid never became complete in the DHT";

  // Bans far longer than the test: they run out only when the clock is skipped past them.
  SkippingClock clock;
  SwarmOptions swarm_options;
  swarm_options.health.ban_base = 100s;
  swarm_options.health.ban_max = 200s;
  auto swarm = std::make_shared<Swarm>(client->get(), clock, swarm_options);
  {
    // While all four are up, every endpoint proves the key that announced it (the swarm uses an
    // endpoint only after that, and remembers the proof): the failures below come after.
    RemoteMixtureOfExperts warm_up(RemoteMixtureOfExpertsOptions(kDim, {4, 4}).k_best(16), swarm);
    warm_up(at::randn({4, kDim}));
    ASSERT_EQ(warm_up->stats().requests, 16);
    ASSERT_EQ(warm_up->stats().nonfinite, 4);
  }

  ASSERT_TRUE(servers[0]->Signal(SIGSTOP));
  ASSERT_TRUE(servers[1]->Signal(SIGKILL));
  ASSERT_TRUE(servers[1]->Wait(10s).has_value());
  constexpr auto kAfterKMin = 500ms;
  RemoteMixtureOfExperts moe(RemoteMixtureOfExpertsOptions(kDim, {4, 4})
                                 .k_best(16)
                                 .k_min(1)
                                 .forward_timeout(30s)
                                 .timeout_after_k_min(kAfterKMin)
                                 .backward_timeout(10s),
                             swarm);
  at::manual_seed(3);
  at::Tensor x = at::randn({8, kDim}).set_requires_grad(true);

  const Deadline start = clock.Now();
  at::Tensor y = moe(x);
  const auto elapsed = clock.Now() - start;
  std::printf(
      "forward with 1 stopped, 1 killed, 1 NaN server of 4: %.0f ms (timeout_after_k_min "
      "%lld ms)\n",
      std::chrono::duration<double, std::milli>(elapsed).count(),
      static_cast<long long>(kAfterKMin.count()));
  ASSERT_TRUE(at::isfinite(y).all().item<bool>());

  // Only server 3's experts (ffn.i.3) answered; weights renormalized over them.
  const Routing& routing = moe->last_routing();
  for (int64_t row = 0; row < 8; ++row) {
    for (size_t slot = 0; slot < routing.chosen[row].size(); ++slot) {
      const bool from_healthy = routing.chosen[row][slot].coords[1] == 3;
      EXPECT_EQ(routing.answered[row][slot].item<bool>(), from_healthy)
          << routing.chosen[row][slot].uid;
    }
  }
  at::Tensor xd = x.detach();
  at::Tensor s0 = at::linear(xd, moe->gates()[0]->weight, moe->gates()[0]->bias);
  at::Tensor s1 = at::linear(xd, moe->gates()[1]->weight, moe->gates()[1]->bias);
  at::Tensor w = at::softmax(s0 + s1.select(1, 3).unsqueeze(1), 1);  // [8, 4] over ffn.i.3
  at::Tensor expected = at::zeros({8, kDim});
  for (int i = 0; i < 4; ++i) {
    expected += w.select(1, i).unsqueeze(1) * LocalFfn("ffn." + std::to_string(i) + ".3", xd);
  }
  EXPECT_LT((y.detach() - expected).abs().max().item<double>(), 1e-5);

  MoeStats stats = moe->stats();
  EXPECT_EQ(stats.nonfinite, 4);  // the NaN server's four experts
  EXPECT_EQ(stats.answered, 4);
  EXPECT_EQ(stats.timed_out, 4);  // the stopped server's
  EXPECT_EQ(stats.answers, 8 * 4);
  // The killed server cannot be reached: banned at once. The stopped and the NaN server have one
  // failed round each since the warm-up: not banned yet (one bad round is not enough). The NaN
  // server's warm-up round was its first. That the stopped server's round is a strike and not a
  // ban shows the layer stopped waiting timeout_after_k_min after k_min: a peer silent until the
  // forward's deadline counts as unreachable and is banned at once.
  EXPECT_EQ(swarm->health().Get(endpoints[1]).bans, 1);
  for (int s : {0, 2}) {
    EXPECT_EQ(swarm->health().Get(endpoints[s]).failures, s == 2 ? 2 : 1) << "server " << s;
    EXPECT_EQ(swarm->health().Get(endpoints[s]).bans, 0) << "server " << s;
    EXPECT_TRUE(swarm->health().Usable(endpoints[s])) << "server " << s;
  }

  // Backward goes to the responders only.
  y.sum().backward();
  EXPECT_EQ(moe->stats().backward_requests, 4);
  EXPECT_EQ(moe->stats().backward_answered, 4);
  EXPECT_TRUE(at::isfinite(x.grad()).all().item<bool>());

  // Two more rounds in which they fail: strikes_to_ban (3) reached, both banned; never the healthy.
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(at::isfinite(moe(x.detach())).all().item<bool>());
  }
  for (int s : {0, 1, 2}) {
    EXPECT_GE(swarm->health().Get(endpoints[s]).bans, 1) << "server " << s;
  }
  EXPECT_FALSE(swarm->health().Usable(endpoints[0]));
  EXPECT_EQ(swarm->health().Get(endpoints[3]).bans, 0);
  EXPECT_EQ(swarm->health().Get(endpoints[3]).failures, 0);

  // Continue the stopped server and skip past its ban: it is probed, asked again, and answers.
  ASSERT_TRUE(servers[0]->Signal(SIGCONT));
  clock.Skip(swarm_options.health.ban_max);
  bool used_again = false;
  const Deadline deadline = clock.Now() + 40s;
  while (!used_again && clock.Now() < deadline) {
    at::Tensor y2 = moe(x.detach());
    ASSERT_TRUE(at::isfinite(y2).all().item<bool>());
    const Routing& r = moe->last_routing();
    for (int64_t row = 0; row < 8 && !used_again; ++row)
      for (size_t slot = 0; slot < r.chosen[row].size(); ++slot)
        used_again = used_again ||
                     (r.chosen[row][slot].coords[1] == 0 && r.answered[row][slot].item<bool>());
  }
  EXPECT_TRUE(used_again) << "the continued server was never used again";
  EXPECT_GE(swarm->health().Get(endpoints[0]).successes, 1);
}

}  // namespace
}  // namespace dmoe::gating
