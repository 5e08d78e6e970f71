// The gating client against one poisoning expert beside an honest one (issue 12, part 5), in
// process: RemoteMixtureOfExperts over a real in-process dmoe expert server and a RogueServer on
// loopback, found through a stand-in directory. Each kind of poison is refused as an answer (the
// layer's output stays what the honest expert alone gives), and every refusal counts against the
// rogue's health until it is banned.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>

#include "core/clock.h"
#include "core/identity.h"
#include "dht/announcement.h"
#include "expert_server/server.h"
#include "gating/remote_moe.h"
#include "tests/hostile/rogue_server.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;
constexpr int64_t kGatingDim = 16;

// expert/ffn.0 at `honest`, expert/ffn.1 at `rogue`, and the grid row that lists both, each
// published under the key its endpoint proves (docs/protocol.md section 4).
gating::ExpertDirectory::FetchFn Directory(const std::string& honest, const PublicKey& honest_key,
                                           const std::string& rogue, const PublicKey& rogue_key) {
  const std::string honest_id = PeerIdOf(honest_key);
  const std::string rogue_id = PeerIdOf(rogue_key);
  std::map<std::string, std::vector<dht::Record>> keys;
  const int64_t expiry = RealClock::Instance().NowUnixMs() + 600'000;
  auto put = [&](const std::string& key, const std::string& subkey, const std::string& value,
                 const PublicKey& publisher) {
    dht::Record r;
    r.publisher = publisher;
    r.key = key;
    r.subkey = subkey;
    r.value = value;
    r.expiration_ms = expiry;
    keys[key].push_back(r);
  };
  put("prefix/ffn.", "0", dht::PrefixEntry{"ffn.0", honest_id}.ToJson(), honest_key);
  put("prefix/ffn.", "1", dht::PrefixEntry{"ffn.1", rogue_id}.ToJson(), rogue_key);
  put("expert/ffn.0", honest_id, dht::ExpertAnnouncement{honest, 0, 0, "ffn", kGatingDim}.ToJson(),
      honest_key);
  put("expert/ffn.1", rogue_id, dht::ExpertAnnouncement{rogue, 0, 0, "ffn", kGatingDim}.ToJson(),
      rogue_key);
  return [keys](std::vector<std::string> wanted, std::chrono::milliseconds,
                std::function<void(gating::ExpertDirectory::KeyResults)> done) {
    gating::ExpertDirectory::KeyResults results;
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

class PoisonGatingTest : public ::testing::TestWithParam<RogueAnswer> {
 protected:
  static void SetUpTestSuite() {
    // Its key is known to the test, which publishes its records.
    const Identity identity = Identity::Generate();
    honest_key_ = identity.public_key();
    expert_server::ExpertServerOptions o;
    o.identity = identity;
    o.clock = &RealClock::Instance();
    o.uids = {"ffn.0"};
    o.expert.hidden_dim = kGatingDim;
    o.expert.seed = 3;
    o.optimizer.kind = expert_server::OptimizerKind::kSgd;
    o.optimizer.lr = 1e-30;  // the weights stay put, so every forward answers alike
    auto s = expert_server::ExpertServer::Start(std::move(o));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    honest_ = s->release();
  }
  static void TearDownTestSuite() {
    if (honest_) honest_->Stop();
    delete honest_;
    honest_ = nullptr;
  }
  static PublicKey honest_key_;
  static expert_server::ExpertServer* honest_;
};
PublicKey PoisonGatingTest::honest_key_{};
expert_server::ExpertServer* PoisonGatingTest::honest_ = nullptr;

TEST_P(PoisonGatingTest, RefusedAnswersLeaveTheOutputHonestAndCountAgainstTheRogue) {
  auto rogue = RogueServer::Start({GetParam(), {"ffn.1"}, kGatingDim, ""});
  ASSERT_TRUE(rogue.ok()) << rogue.status().ToString();
  gating::SwarmOptions swarm_options;
  swarm_options.health.ban_base = 60'000ms;  // once banned, the rogue stays out for the test
  auto swarm = std::make_shared<gating::Swarm>(
      Directory(honest_->endpoint(), honest_key_, (*rogue)->endpoint(),
                (*rogue)->identity().public_key()),
      RealClock::Instance(), swarm_options);
  gating::RemoteMixtureOfExperts moe(gating::RemoteMixtureOfExpertsOptions(kGatingDim, {2})
                                         .k_best(2)
                                         .k_min(1)
                                         .forward_timeout(3000ms)
                                         .timeout_after_k_min(300ms),
                                     swarm);
  torch::NoGradGuard no_grad;
  at::manual_seed(4);
  for (int round = 0; round < 4; ++round) {
    at::Tensor x = at::randn({6, kGatingDim});
    at::Tensor y = moe->forward(x);
    ASSERT_TRUE(at::isfinite(y).all().item<bool>()) << RogueAnswerName(GetParam());
    // Only the honest expert (layer norm: |y| <= sqrt(16) with unit gamma) contributes.
    EXPECT_LE(y.abs().max().item<double>(), 4.01) << RogueAnswerName(GetParam());
  }
  gating::MoeStats stats = moe->stats();
  EXPECT_EQ(stats.answered, 4) << "the honest expert answered every round";
  EXPECT_GE(stats.requests, 5) << "the rogue was asked before its ban";
  if (GetParam() == RogueAnswer::kHuge || GetParam() == RogueAnswer::kNan ||
      GetParam() == RogueAnswer::kGarbage) {
    EXPECT_GE(stats.nonfinite, 1);
  }
  const gating::PeerStats rogue_health = swarm->health().Get((*rogue)->endpoint());
  EXPECT_GE(rogue_health.failures, 1) << RogueAnswerName(GetParam());
  EXPECT_GE(rogue_health.bans, 1) << RogueAnswerName(GetParam()) << ": three refusals ban a peer";
  EXPECT_FALSE(swarm->health().Usable((*rogue)->endpoint()));
  EXPECT_TRUE(swarm->health().Usable(honest_->endpoint()));
}

INSTANTIATE_TEST_SUITE_P(EachPoison, PoisonGatingTest,
                         ::testing::Values(RogueAnswer::kHuge, RogueAnswer::kNan,
                                           RogueAnswer::kGarbage, RogueAnswer::kWrongShape,
                                           RogueAnswer::kInvalidArgument),
                         [](const auto& info) { return std::string(RogueAnswerName(info.param)); });

}  // namespace
}  // namespace dmoe::hostile
