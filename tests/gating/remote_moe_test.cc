// RemoteMixtureOfExperts against real expert servers on loopback (in this process, so the test
// can build the same experts locally), found through a real DHT.
#include "gating/remote_moe.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "expert_server/expert.h"
#include "expert_server/server.h"
#include "gating/remote_expert.h"
#include "tests/gating/swarm4x4.h"
#include "tests/testing/process.h"

namespace dmoe::gating {
namespace {

using namespace std::chrono_literals;

// The whole mixture computed here: brute-force top-k over all 16 experts by gating score, softmax
// over them, local experts with the servers' weights.
at::Tensor LocalMixture(const std::vector<at::Tensor>& gate_w,
                        const std::vector<at::Tensor>& gate_b, const at::Tensor& x, int k,
                        std::map<std::string, std::unique_ptr<expert_server::Expert>>& twins) {
  at::Tensor s0 = at::linear(x, gate_w[0], gate_b[0]), s1 = at::linear(x, gate_w[1], gate_b[1]);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < x.size(0); ++i) {
    at::Tensor all = (s0[i].unsqueeze(1) + s1[i].unsqueeze(0)).reshape({16});  // [i*4 + j]
    at::Tensor top = std::get<1>(all.detach().topk(k));
    at::Tensor w = at::softmax(all.index_select(0, top), 0);
    at::Tensor y = at::zeros({kDim});
    for (int64_t s = 0; s < k; ++s) {
      int64_t e = top[s].item<int64_t>();
      std::string uid = "ffn." + std::to_string(e / 4) + "." + std::to_string(e % 4);
      if (!twins.count(uid)) twins[uid] = LocalTwin(uid);
      y = y + w[s] * LocalFfn(*twins[uid], x[i].unsqueeze(0)).squeeze(0);
    }
    rows.push_back(y);
  }
  return at::stack(rows);
}

TEST_F(Swarm4x4, OutputAndGradientsMatchTheSameMixtureComputedLocally) {
  RemoteMixtureOfExperts moe(
      RemoteMixtureOfExpertsOptions(kDim, {4, 4}).k_best(4).k_min(4).forward_timeout(20s),
      MakeSwarm());
  at::Tensor x = at::randn({12, kDim}).set_requires_grad(true);
  at::Tensor g = at::randn({12, kDim});
  at::Tensor y = moe(x);
  (y * g).sum().backward();

  std::vector<at::Tensor> gw, gb;
  for (auto& gate : moe->gates()) {
    gw.push_back(gate->weight.detach().clone().set_requires_grad(true));
    gb.push_back(gate->bias.detach().clone().set_requires_grad(true));
  }
  at::Tensor x_ref = x.detach().clone().set_requires_grad(true);
  std::map<std::string, std::unique_ptr<expert_server::Expert>> twins;
  at::Tensor y_ref = LocalMixture(gw, gb, x_ref, 4, twins);
  (y_ref * g).sum().backward();

  EXPECT_LT((y - y_ref).abs().max().item<double>(), 1e-5);
  EXPECT_LT((x.grad() - x_ref.grad()).abs().max().item<double>(), 1e-5);
  for (int i = 0; i < 2; ++i) {
    EXPECT_LT((moe->gates()[i]->weight.grad() - gw[i].grad()).abs().max().item<double>(), 1e-5);
    EXPECT_LT((moe->gates()[i]->bias.grad() - gb[i].grad()).abs().max().item<double>(), 1e-5);
  }
  MoeStats stats = moe->stats();
  EXPECT_EQ(stats.samples, 12);
  EXPECT_EQ(stats.answers, 12 * 4);
  EXPECT_EQ(stats.zero_output_samples, 0);
  EXPECT_EQ(stats.answered, stats.requests);
  EXPECT_EQ(stats.backward_answered, stats.requests);  // every responder got its gradient
  EXPECT_LE(stats.requests, 16);                       // one request per chosen expert
  EXPECT_GT(moe->balance_loss().item<double>(), 0);
}

TEST_F(Swarm4x4, TokensOfASequenceAreRoutedOneByOneAndHalfPrecisionWorks) {
  RemoteMixtureOfExperts moe(RemoteMixtureOfExpertsOptions(kDim, {4, 4})
                                 .k_best(2)
                                 .forward_timeout(20s)
                                 .wire_dtype(safetensors::DType::kBF16),
                             MakeSwarm());
  at::Tensor x = at::randn({3, 5, kDim});
  at::Tensor y = moe(x);
  ASSERT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(moe->last_routing().chosen.size(), 15u);
  EXPECT_EQ(moe->stats().samples, 15);
  // Same as routing the flattened tokens, up to BF16 rounding.
  RemoteMixtureOfExperts f32(RemoteMixtureOfExpertsOptions(kDim, {4, 4}).k_best(2), MakeSwarm());
  for (size_t i = 0; i < 2; ++i) {
    f32->gates()[i]->weight.data().copy_(moe->gates()[i]->weight);
    f32->gates()[i]->bias.data().copy_(moe->gates()[i]->bias);
  }
  at::Tensor y32 = f32(x.reshape({15, kDim})).reshape({3, 5, kDim});
  EXPECT_LT((y - y32).abs().max().item<double>(), 0.1);
  EXPECT_TRUE(at::isfinite(y).all().item<bool>());
}

TEST_F(Swarm4x4, RemoteExpertForwardAndBackwardMatchTheLocalExpert) {
  auto twin = LocalTwin("ffn.2.1");
  std::string endpoint = servers_[2]->endpoint();
  RemoteExpert expert("ffn.2.1", endpoint, MakeSwarm());
  Result<ExpertInfo> info = expert->info();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->hidden_dim, kDim);
  EXPECT_EQ(info->type, "ffn");
  at::Tensor x = at::randn({4, kDim}).set_requires_grad(true);
  at::Tensor x_ref = x.detach().clone().set_requires_grad(true);
  at::Tensor y = expert(x);
  at::Tensor y_ref = LocalFfn(*twin, x_ref);
  EXPECT_LT((y - y_ref).abs().max().item<double>(), 1e-5);
  at::Tensor g = at::randn({4, kDim});
  (y * g).sum().backward();
  (y_ref * g).sum().backward();
  EXPECT_LT((x.grad() - x_ref.grad()).abs().max().item<double>(), 1e-5);
}

// The publisher of every expert of DeadSwarm.
const Identity& DeadPeer() {
  static const Identity id = Identity::Generate();
  return id;
}

// A directory whose every expert is announced at a port nobody listens on. Nothing there ever
// answers, so nothing waits for time to pass: the swarm runs on `clock`, which the test moves.
std::shared_ptr<Swarm> DeadSwarm(const Clock& clock, SwarmOptions options = {}) {
  return std::make_shared<Swarm>(
      [](std::vector<std::string> keys, std::chrono::milliseconds,
         std::function<void(ExpertDirectory::KeyResults)> done) {
        ExpertDirectory::KeyResults results;
        const int64_t expiry = RealClock::Instance().NowUnixMs() + 60'000;
        for (const std::string& key : keys) {
          dht::KeyResult r{key, Status::Ok(), {}, 1, 1};
          auto record = [&](std::string subkey, std::string value) {
            dht::Record rec;
            rec.key = key;
            rec.subkey = std::move(subkey);
            rec.value = std::move(value);
            rec.expiration_ms = expiry;
            rec.publisher = DeadPeer().public_key();
            r.records.push_back(rec);
          };
          if (key.rfind("expert/", 0) == 0) {
            record(DeadPeer().peer_id(), R"({"endpoint":"http://127.0.0.1:1","step":0,"load":0})");
          } else {
            for (int c = 0; c < 2; ++c) record(std::to_string(c), "{}");
          }
          results.push_back(std::move(r));
        }
        done(std::move(results));
      },
      clock, options);
}

TEST(RemoteMoeDeadSwarm, AllExpertsDeadGivesZerosAndACountOrAClearError) {
  FakeClock clock;
  auto swarm = DeadSwarm(clock);
  RemoteMixtureOfExperts lenient(
      RemoteMixtureOfExpertsOptions(8, {2, 2}).k_best(2).allow_zero_outputs(true), swarm);
  at::Tensor x = at::randn({5, 8}).set_requires_grad(true);
  at::Tensor y = lenient(x);
  EXPECT_TRUE(at::equal(y, at::zeros_like(y)));
  EXPECT_EQ(lenient->stats().zero_output_samples, 5);
  EXPECT_EQ(lenient->stats().answered, 0);
  // The endpoint never answered the challenge that must precede calls: no call went out, and
  // its publisher is banned as unreachable.
  EXPECT_EQ(lenient->stats().requests, 0);
  EXPECT_EQ(swarm->health().Get(DeadPeer().peer_id()).bans, 1);
  y.sum().backward();  // no NaN anywhere, nothing to send
  EXPECT_TRUE(at::isfinite(x.grad()).all().item<bool>());
  EXPECT_TRUE(at::isfinite(lenient->gates()[0]->weight.grad()).all().item<bool>());

  // The peer is banned now; a strict layer reports why it cannot answer.
  RemoteMixtureOfExperts strict(RemoteMixtureOfExpertsOptions(8, {2, 2}).k_best(2), swarm);
  try {
    strict(x);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than k_min=1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(strict->stats().zero_output_samples, 5);
}

// A dead peer is banned at once; when the ban runs out (the test moves the clock past it) it is
// probed over real HTTP (a new challenge on GET /v1/health), the probe fails, and it stays out for
// twice as long without costing a round. The ban is the publisher key's.
TEST(RemoteMoeDeadSwarm, ABannedPeerIsProbedWhenItsBanEndsAndStaysOutWhileDead) {
  SwarmOptions options;
  options.health.ban_base = 1s;
  options.health.ban_max = 10s;
  FakeClock clock;
  auto swarm = DeadSwarm(clock, options);
  const std::string dead = DeadPeer().peer_id();
  const Replica replica{"http://127.0.0.1:1", dead, DeadPeer().public_key()};
  RemoteMixtureOfExperts moe(
      RemoteMixtureOfExpertsOptions(8, {2, 2}).k_best(2).allow_zero_outputs(true), swarm);
  moe(at::randn({3, 8}));
  ASSERT_EQ(swarm->health().Get(dead).bans, 1);
  EXPECT_EQ(swarm->Check(replica), Usability::kUnusable);
  EXPECT_EQ(swarm->health().Get(dead).probes, 0) << "no probe before the ban runs out";
  clock.Advance(999ms);
  EXPECT_EQ(swarm->Check(replica), Usability::kUnusable);
  EXPECT_EQ(swarm->health().Get(dead).probes, 0) << "no probe before the ban runs out";

  clock.Advance(1ms);
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        // banned, then on probation, then banned again
        EXPECT_EQ(swarm->Check(replica), Usability::kUnusable);
        return swarm->health().Get(dead).bans == 2;
      },
      10s));
  PeerStats p = swarm->health().Get(dead);
  EXPECT_EQ(p.probes, 1);
  EXPECT_FALSE(p.probing);
  EXPECT_TRUE(p.probation);
  EXPECT_EQ(p.banned_until - clock.Now(), 2s) << "the second ban doubles";
  const int64_t requests = moe->stats().requests;
  moe(at::randn({3, 8}));
  EXPECT_EQ(moe->stats().requests, requests) << "no calls go to a peer out on a ban";
}

}  // namespace
}  // namespace dmoe::gating
