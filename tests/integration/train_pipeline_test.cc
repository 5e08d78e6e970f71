// dmoe-train with several steps in flight (--in-flight), against real servers on loopback: two
// pipelined trainers train the same experts at once without corrupting them; servers'
// --max-staleness refuses the gradients that pipelining makes stale, and training goes on; a bad
// --model is an error message and exit 2, and a normal end is not reported as a signal.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>

#include "tensor/safetensors.h"
#include "tests/integration/swarm_util.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;

class TrainPipelineTest : public ::testing::Test {
 protected:
  void StartSwarm(const std::vector<std::string>& server_extra = {}) {
    auto dht = StartDht();
    ASSERT_TRUE(dht.ok()) << dht.status().ToString();
    dht_ = std::move(dht).value();
    for (int i = 0; i < 4; ++i) {
      std::vector<std::string> args =
          SwarmServerArgs(i, dht_.address, dir_.Sub("server" + std::to_string(i)));
      args.insert(args.end(), server_extra.begin(), server_extra.end());
      auto s = StartServer(args);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      servers_.push_back(std::move(s).value());
    }
  }

  double RefusedStale() {
    double sum = 0;
    for (auto& s : servers_) {
      ServerClient client(s.endpoint);
      auto page = client.Get("/metrics");
      EXPECT_TRUE(page.ok());
      if (!page.ok()) continue;
      sum += PrometheusValue(std::string(page->body_view()), "dmoe_refused_gradients_total",
                             R"(reason="stale")")
                 .value_or(0);
    }
    return sum;
  }

  testing::TempDir dir_{"dmoe-pipeline"};
  std::string spec_ = dir_.WriteFile("spec.json", kFmnistTestSpec);
  DhtProcess dht_;
  std::vector<ServerProcess> servers_;
};

TEST_F(TrainPipelineTest, ABadModelIsAnErrorAndExitTwo) {
  testing::RunResult missing =
      testing::Run(TrainArgs(dir_.Sub("no-such-spec.json"), "127.0.0.1:9", {"--steps", "1"}), 60s);
  EXPECT_EQ(missing.exit_code, 2) << "signal " << missing.signal << "\n" << missing.err;
  EXPECT_NE(missing.err.find("dmoe-train: not_found: cannot read model spec"), std::string::npos)
      << missing.err;

  testing::RunResult malformed = testing::Run(
      TrainArgs(dir_.WriteFile("bad.json", "{\"name\": \"x\", "), "127.0.0.1:9", {"--steps", "1"}),
      60s);
  EXPECT_EQ(malformed.exit_code, 2) << "signal " << malformed.signal << "\n" << malformed.err;
  EXPECT_NE(malformed.err.find("dmoe-train: invalid_argument"), std::string::npos) << malformed.err;
}

// Two trainers, each with its own seed (data order) and 8 steps in flight, train the same 16
// experts at once. Both reach a useful accuracy, and every expert's checkpoint is finite.
TEST_F(TrainPipelineTest, TwoPipelinedTrainersShareTheExpertsWithoutCorruptingThem) {
  StartSwarm();
  std::vector<std::unique_ptr<testing::Process>> trainers;
  for (int seed : {1, 2}) {
    auto p = testing::Process::Spawn(
        TrainArgs(spec_, dht_.address,
                  {"--steps", "600", "--batch-size", "64", "--in-flight", "8", "--seed",
                   std::to_string(seed), "--eval-every", "0", "--publish-every", "0",
                   "--eval-samples", "2000", "--log-every", "50"}));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    trainers.push_back(std::move(p).value());
  }
  for (auto& t : trainers) {
    auto done = t->WaitForLine("done: ", 600s);
    ASSERT_TRUE(done.has_value()) << t->stderr_text();
    std::string out;
    for (const auto& line : t->stdout_lines()) out += line + "\n";
    TrainSummary summary = ParseTrainOutput(out);
    EXPECT_EQ(summary.steps, 600) << out;
    EXPECT_GE(summary.test_accuracy, 0.75) << out;
    // The pipeline really overlapped steps: 8 in flight are groups of 2 steps per update, and a
    // gradient lands at most ceil(7 / 2) = 4 updates after the parameters it read.
    EXPECT_GE(summary.max_staleness, 1) << out;
    EXPECT_LE(summary.max_staleness, 4) << out;
    std::optional<int> status = t->Wait(30s);
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << t->stderr_text();
    // A normal end is not reported as a signal.
    EXPECT_EQ(t->stderr_text().find("signal"), std::string::npos) << t->stderr_text();
  }

  // Both trainers' updates reached every server, and none was refused as non-finite.
  for (auto& s : servers_) {
    ServerClient client(s.endpoint);
    auto page = client.Get("/metrics");
    ASSERT_TRUE(page.ok());
    EXPECT_EQ(PrometheusValue(std::string(page->body_view()), "dmoe_refused_gradients_total",
                              R"(reason="nonfinite")")
                  .value_or(0),
              0);
  }
  for (size_t i = 0; i < servers_.size(); ++i) {
    int status = servers_[i].process->Stop(SIGTERM, 60s);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int j = 0; j < 4; ++j) {
      const std::string uid = "ffn." + std::to_string(i) + "." + std::to_string(j);
      const std::string file = dir_.Sub(uid + ".safetensors");
      testing::RunResult exported =
          testing::Run({DMOE_CLI_BINARY, "export", "--db", dir_.Sub("server" + std::to_string(i)),
                        "--uid", uid, "--out", file});
      ASSERT_EQ(exported.exit_code, 0) << exported.err;
      std::ifstream in(file, std::ios::binary);
      std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                 std::istreambuf_iterator<char>());
      auto decoded = safetensors::Decode(bytes);
      ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
      std::smatch m;
      ASSERT_TRUE(std::regex_search(exported.out, m, std::regex(R"(step (\d+))"))) << exported.out;
      EXPECT_GT(std::stoll(m[1]), 0) << uid << " was never trained";
      for (const auto& t : decoded->tensors) {
        if (t.dtype != safetensors::DType::kF32) continue;
        for (size_t k = 0; k < t.data.size() / 4; ++k) {
          float v = 0;
          std::memcpy(&v, t.data.data() + 4 * k, 4);
          ASSERT_TRUE(std::isfinite(v)) << uid << " " << t.name << "[" << k << "]";
        }
      }
    }
  }
}

// An expert's staleness is the number of its optimizer steps between a forward and its backward.
// One synchronous trainer never makes it more than 0; eight steps in flight do, and a server with
// --max-staleness 1 refuses those gradients while training still finishes.
TEST_F(TrainPipelineTest, ServersRefuseGradientsStalerThanMaxStaleness) {
  StartSwarm({"--max-staleness", "1"});
  testing::RunResult sync =
      testing::Run(TrainArgs(spec_, dht_.address,
                             {"--steps", "60", "--in-flight", "1", "--eval-every", "0",
                              "--publish-every", "0", "--eval-samples", "500"}),
                   300s);
  ASSERT_EQ(sync.exit_code, 0) << sync.out << sync.err;
  EXPECT_EQ(ParseTrainOutput(sync.out).max_staleness, 0) << sync.out;
  EXPECT_EQ(RefusedStale(), 0);

  testing::RunResult piped =
      testing::Run(TrainArgs(spec_, dht_.address,
                             {"--steps", "200", "--in-flight", "8", "--eval-every", "0",
                              "--publish-every", "0", "--eval-samples", "500"}),
                   300s);
  ASSERT_EQ(piped.exit_code, 0) << piped.out << piped.err;
  EXPECT_EQ(ParseTrainOutput(piped.out).steps, 200) << piped.out;
  EXPECT_GT(RefusedStale(), 0) << "8 steps in flight never made a gradient 2 expert steps stale";
}

}  // namespace
}  // namespace dmoe::integration
