// dmoe-train against poisoning expert servers (issue 12, parts 5 and 6): half of a 4x4 grid is
// hosted by a real dmoe-server, the other half by rogues that answer huge finite values (3e38),
// NaN, garbage bytes, a wrong shape, invalid_argument for a valid x, or nothing at all. Training
// goes on with a finite loss, and no non-finite weight reaches the trainer's checkpoint, the
// router's stored model or the honest server's checkpoint (all read back through dmoe::storage).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <regex>

#include "storage/expert_store.h"
#include "storage/kv_store.h"
#include "storage/model_store.h"
#include "tensor/safetensors.h"
#include "tests/hostile/rogue_server.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;

constexpr char kFmnistSpec[] = R"({"name": "fmnist", "input_dim": 784, "layers": [
  {"type": "linear", "out": 64}, {"type": "relu"},
  {"type": "residual_moe", "uid_prefix": "ffn", "grid": [4, 4], "k_best": 4, "k_min": 1,
   "forward_timeout_ms": 3000, "timeout_after_k_min_ms": 150, "backward_k_min": 1,
   "backward_timeout_ms": 3000},
  {"type": "layer_norm"}, {"type": "linear", "out": 10}]})";

// Non-finite F32 values in a safetensors blob (kInvalidArgument when it does not decode).
Result<int64_t> NonFiniteValues(std::span<const uint8_t> blob, int64_t* tensors) {
  DMOE_ASSIGN_OR_RETURN(safetensors::Decoded d, safetensors::Decode(blob));
  int64_t bad = 0;
  for (const safetensors::TensorView& t : d.tensors) {
    if (t.dtype != safetensors::DType::kF32) continue;
    ++*tensors;
    for (size_t i = 0; i + 4 <= t.data.size(); i += 4) {
      float f;
      std::memcpy(&f, t.data.data() + i, 4);
      bad += !std::isfinite(f);
    }
  }
  return bad;
}

TEST(PoisonTrainTest, RoguesBesideAnHonestServerNeverPoisonTrainingOrWhatIsKept) {
  testing::TempDir dir("dmoe-poison-train");
  auto dht = testing::StartDht();
  ASSERT_TRUE(dht.ok()) << dht.status().ToString();
  const std::string dht_address = dht->address;

  auto honest = integration::StartServer({"--listen", "127.0.0.1:0", "--experts", "ffn.[0:2].[0:4]",
                                          "--hidden-dim", "64", "--threads", "1", "--dht",
                                          dht_address, "--announce-every", "1", "--announce-ttl",
                                          "3", "--db", dir.Sub("server")});
  ASSERT_TRUE(honest.ok()) << honest.status().ToString();

  const std::vector<std::pair<RogueAnswer, std::vector<std::string>>> rogue_plan = {
      {RogueAnswer::kHuge, {"ffn.2.0", "ffn.3.3"}}, {RogueAnswer::kNan, {"ffn.2.1"}},
      {RogueAnswer::kGarbage, {"ffn.2.2"}},         {RogueAnswer::kWrongShape, {"ffn.2.3"}},
      {RogueAnswer::kInvalidArgument, {"ffn.3.0"}}, {RogueAnswer::kStall, {"ffn.3.1", "ffn.3.2"}},
  };
  std::vector<std::unique_ptr<RogueServer>> rogues;
  for (const auto& [answer, uids] : rogue_plan) {
    auto rogue = RogueServer::Start({answer, uids, 64, dht_address});
    ASSERT_TRUE(rogue.ok()) << RogueAnswerName(answer) << ": " << rogue.status().ToString();
    rogues.push_back(std::move(rogue).value());
  }

  auto router =
      testing::StartRouter({"--dht", dht_address, "--db", dir.Sub("router"), "--threads", "1"});
  ASSERT_TRUE(router.ok()) << router.status().ToString();
  const std::string router_url = router->endpoint;

  const std::string spec = dir.WriteFile("spec.json", kFmnistSpec);
  testing::RunResult train = testing::Run({DMOE_TRAIN_BINARY,
                                           "--model",
                                           spec,
                                           "--dht",
                                           dht_address,
                                           "--router",
                                           router_url,
                                           "--db",
                                           dir.Sub("trainer"),
                                           "--steps",
                                           "40",
                                           "--batch-size",
                                           "32",
                                           "--eval-every",
                                           "0",
                                           "--publish-every",
                                           "20",
                                           "--eval-samples",
                                           "500",
                                           "--log-every",
                                           "10",
                                           "--threads",
                                           "1",
                                           "--log-level",
                                           "warn"},
                                          120s);
  ASSERT_EQ(train.exit_code, 0) << train.out << train.err;

  // Training went on: every progress line has a finite loss, and all 40 steps were done.
  const std::regex progress(R"(step (\d+)/40 loss (\S+) .* nonfinite_steps (\d+))");
  int lines = 0;
  for (auto it = std::sregex_iterator(train.out.begin(), train.out.end(), progress);
       it != std::sregex_iterator(); ++it) {
    ++lines;
    const double loss = std::stod((*it)[2]);
    EXPECT_TRUE(std::isfinite(loss)) << it->str();
    EXPECT_LT(loss, 10.0) << it->str();
    // The poison was refused as answers, before it reached a loss: no step had to be skipped.
    EXPECT_EQ((*it)[3], "0") << it->str();
  }
  EXPECT_EQ(lines, 4) << train.out;
  EXPECT_TRUE(std::regex_search(train.out, std::regex(R"(done: steps 40 )"))) << train.out;
  EXPECT_TRUE(std::regex_search(train.out, std::regex(R"(published fmnist version \d+)")))
      << train.out << train.err;

  // The rogues were asked: the beam search reached them.
  int64_t asked = 0;
  std::string counts;
  for (size_t i = 0; i < rogues.size(); ++i) {
    asked += rogues[i]->requests();
    counts += std::string(" ") + RogueAnswerName(rogue_plan[i].first) + "=" +
              std::to_string(rogues[i]->requests());
  }
  EXPECT_GT(asked, 0) << counts;
  RecordProperty("rogue_requests", counts);

  // Nothing non-finite was kept anywhere.
  ASSERT_EQ(router->process->Stop(SIGTERM, 30s), 0) << router->process->stderr_text();
  {
    auto kv = storage::KvStore::Open(dir.Sub("router"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    storage::ModelStore models(std::shared_ptr<storage::KvStore>(std::move(kv).value()));
    Result<storage::Model> model = models.Get("fmnist");
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    int64_t tensors = 0;
    Result<int64_t> bad = NonFiniteValues(model->state, &tensors);
    ASSERT_TRUE(bad.ok()) << bad.status().ToString();
    EXPECT_EQ(*bad, 0) << "non-finite weights in the router's stored model";
    EXPECT_GT(tensors, 0);
  }
  {
    auto kv = storage::KvStore::Open(dir.Sub("trainer"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    Result<std::string> params = (*kv)->Get("node_state", "trainer/fmnist/params");
    ASSERT_TRUE(params.ok()) << params.status().ToString();
    int64_t tensors = 0;
    Result<int64_t> bad = NonFiniteValues(
        {reinterpret_cast<const uint8_t*>(params->data()), params->size()}, &tensors);
    ASSERT_TRUE(bad.ok()) << bad.status().ToString();
    EXPECT_EQ(*bad, 0) << "non-finite weights in the trainer's checkpoint";
    EXPECT_GT(tensors, 0);
  }
  const int status = honest->process->Stop(SIGTERM, 30s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << honest->process->stderr_text();
  auto store = storage::ExpertStore::Open(
      dir.Sub("server"), {.create_if_missing = false, .clock = &RealClock::Instance()});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      const std::string uid = "ffn." + std::to_string(i) + "." + std::to_string(j);
      Result<storage::Checkpoint> cp = (*store)->LoadLatest(uid);
      ASSERT_TRUE(cp.ok()) << uid << ": " << cp.status().ToString();
      for (const storage::NamedTensor& t : cp->tensors) {
        if (t.dtype != safetensors::DType::kF32) continue;
        for (size_t k = 0; k + 4 <= t.data.size(); k += 4) {
          float f;
          std::memcpy(&f, t.data.data() + k, 4);
          ASSERT_TRUE(std::isfinite(f)) << uid << " " << t.name;
        }
      }
    }
  }
}

// A trainer checkpoint with NaN weights (as trainers wrote before they refused to keep poison) is
// refused at start with a message saying what to do, instead of training NaN forever.
TEST(PoisonTrainTest, APoisonedTrainerCheckpointIsRefusedAtStart) {
  testing::TempDir dir("dmoe-poison-resume");
  auto dht = testing::StartDht();
  ASSERT_TRUE(dht.ok()) << dht.status().ToString();
  const std::string dht_address = dht->address;
  {
    std::vector<float> weight(10 * 784, 0.01f), bias(10, 0.0f);
    weight[123] = std::numeric_limits<float>::quiet_NaN();
    std::vector<uint8_t> wb(weight.size() * 4), bb(bias.size() * 4);
    std::memcpy(wb.data(), weight.data(), wb.size());
    std::memcpy(bb.data(), bias.data(), bb.size());
    auto blob = safetensors::Encode({{"layer0.weight", safetensors::DType::kF32, {10, 784}, wb},
                                     {"layer0.bias", safetensors::DType::kF32, {10}, bb}},
                                    {});
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    auto kv = storage::KvStore::Open(dir.Sub("trainer"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    ASSERT_TRUE(
        (*kv)
            ->ReplacePrefix("node_state", "trainer/fmnist/",
                            {{"trainer/fmnist/meta", R"({"step": 5, "version": 0})"},
                             {"trainer/fmnist/params", std::string(blob->begin(), blob->end())},
                             {"trainer/fmnist/optim", "unread"}},
                            true)
            .ok());
  }
  const std::string spec = dir.WriteFile(
      "spec.json",
      R"({"name": "fmnist", "input_dim": 784, "layers": [{"type": "linear", "out": 10}]})");
  testing::RunResult train =
      testing::Run({DMOE_TRAIN_BINARY, "--model", spec, "--dht", dht_address, "--db",
                    dir.Sub("trainer"), "--steps", "10", "--threads", "1", "--log-level", "warn"},
                   60s);
  EXPECT_NE(train.exit_code, 0) << train.out << train.err;
  EXPECT_NE((train.out + train.err).find("holds NaN or Inf weights"), std::string::npos)
      << train.out << train.err;
  EXPECT_EQ(train.out.find("step 10/10"), std::string::npos) << train.out;
}

}  // namespace
}  // namespace dmoe::hostile
