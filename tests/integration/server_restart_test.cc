// dmoe-server persistence across processes: a server killed with SIGKILL comes back with the step,
// weights and optimizer state of its last checkpoint; one stopped with SIGTERM writes a final
// checkpoint first. Every wait polls with a deadline; every child is killed and reaped by RAII.
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tensor/safetensors.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;

constexpr char kUid[] = "ffn.3";
constexpr int kDim = 32;
constexpr int kBatch = 4;

// What one forward or backward answered.
struct Answer {
  int http_status = 0;
  int64_t step = -1;
  std::vector<uint8_t> output;  // the raw bytes of y or grad_x
  std::string error;
};

Answer Call(ServerClient& client, bool backward, const std::vector<uint8_t>& body) {
  Answer a;
  Result<net::Response> r = backward ? client.Backward(kUid, body) : client.Forward(kUid, body);
  if (!r.ok()) {
    a.error = r.status().ToString();
    return a;
  }
  a.http_status = r->status;
  if (r->status != 200) {
    a.error = std::string(r->body_view());
    return a;
  }
  Result<safetensors::Decoded> decoded = safetensors::Decode(r->body);
  if (!decoded.ok()) {
    a.error = decoded.status().ToString();
    return a;
  }
  const safetensors::TensorView* out = decoded->Find(backward ? "grad_x" : "y");
  if (out == nullptr || decoded->metadata.count("step") == 0) {
    a.error = "answer without its tensor or step";
    return a;
  }
  a.output.assign(out->data.begin(), out->data.end());
  a.step = std::stoll(decoded->metadata.at("step"));
  return a;
}

std::vector<uint8_t> BackwardBody(uint64_t seed) {
  return EncodeF32(
      {Pattern("x", {kBatch, kDim}, seed), Pattern("grad_y", {kBatch, kDim}, seed + 1000, 0.1f)});
}

std::vector<uint8_t> ForwardBody() { return EncodeF32({Pattern("x", {kBatch, kDim}, 424242)}); }

// Sends backward i = 0..n-1 one at a time (so each is its own optimizer step) and checks that
// answer i reports step first_step + i + 1.
void TrainSteps(ServerClient& client, int n, int64_t first_step) {
  for (int i = 0; i < n; ++i) {
    Answer a = Call(client, /*backward=*/true, BackwardBody(static_cast<uint64_t>(i)));
    ASSERT_EQ(a.http_status, 200) << a.error;
    EXPECT_EQ(a.step, first_step + i + 1);
    EXPECT_EQ(a.output.size(), static_cast<size_t>(kBatch * kDim * 4));
  }
}

TEST(ServerRestartTest, KillNineThenRestartRestoresStepWeightsAndOptimizerState) {
  testing::TempDir dir("dmoe-server-itest");
  const std::string db = dir.Sub("db");
  std::vector<std::string> args = BaseServerArgs(kUid, kDim);
  std::vector<std::string> with_db = args;
  with_db.insert(with_db.end(), {"--db", db, "--checkpoint-every", "1"});

  // `twin` has the same seed and sees the same requests but never restarts: the reference for
  // what the restored server must compute after one more step (which needs Adam's moments).
  Result<ServerProcess> server = StartServer(with_db);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  Result<ServerProcess> twin = StartServer(args);
  ASSERT_TRUE(twin.ok()) << twin.status().ToString();
  ServerClient client(server->endpoint), twin_client(twin->endpoint);

  constexpr int kSteps = 5;
  ASSERT_EQ(client.ExpertStep(kUid), 0);
  ASSERT_NO_FATAL_FAILURE(TrainSteps(client, kSteps, 0));
  ASSERT_NO_FATAL_FAILURE(TrainSteps(twin_client, kSteps, 0));
  ASSERT_EQ(client.ExpertStep(kUid), kSteps);
  Answer before = Call(client, /*backward=*/false, ForwardBody());
  ASSERT_EQ(before.http_status, 200) << before.error;
  EXPECT_EQ(before.step, kSteps);
  Answer twin_before = Call(twin_client, /*backward=*/false, ForwardBody());
  ASSERT_EQ(twin_before.output, before.output) << "same seed and steps must give the same y";

  // A checkpoint that counted after the last step answered may still hold the state from before
  // it (its snapshot can precede the step); the one after that cannot.
  std::optional<double> count = client.Metric("dmoe_checkpoints_total");
  ASSERT_TRUE(count.has_value());
  const double wanted = *count + 2;
  ASSERT_TRUE(testing::PollUntil(
      [&] { return client.Metric("dmoe_checkpoints_total").value_or(-1) >= wanted; }, 30s))
      << "no checkpoint after step " << kSteps << "; stderr:\n"
      << server->process->stderr_text();
  ASSERT_EQ(client.ExpertStep(kUid), kSteps) << "nothing else may have stepped the expert";

  const int status = server->process->Stop(SIGKILL, 10s);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

  Result<ServerProcess> restarted = StartServer(with_db);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  ServerClient again(restarted->endpoint);
  EXPECT_EQ(again.ExpertStep(kUid), kSteps);
  Answer after = Call(again, /*backward=*/false, ForwardBody());
  ASSERT_EQ(after.http_status, 200) << after.error;
  EXPECT_EQ(after.step, kSteps);
  EXPECT_EQ(after.output, before.output) << "y after restart differs from y before the kill";
  EXPECT_NE(restarted->process->stderr_text().find("restored checkpoint at step " +
                                                   std::to_string(kSteps)),
            std::string::npos)
      << restarted->process->stderr_text();

  // One more identical step on both: equal only if the optimizer state was restored too.
  ASSERT_NO_FATAL_FAILURE(TrainSteps(again, 1, kSteps));
  ASSERT_NO_FATAL_FAILURE(TrainSteps(twin_client, 1, kSteps));
  Answer next = Call(again, /*backward=*/false, ForwardBody());
  Answer twin_next = Call(twin_client, /*backward=*/false, ForwardBody());
  ASSERT_EQ(next.http_status, 200) << next.error;
  EXPECT_EQ(next.step, kSteps + 1);
  EXPECT_NE(next.output, before.output) << "the step after the restart changed nothing";
  EXPECT_EQ(next.output, twin_next.output)
      << "after one more step the restored server and its never-restarted twin disagree";
}

TEST(ServerRestartTest, SigtermWritesAFinalCheckpointThatTheRestartLoads) {
  testing::TempDir dir("dmoe-server-itest");
  std::vector<std::string> args = BaseServerArgs(kUid, kDim);
  // No periodic checkpoint can happen during the test: only the final one can save the steps.
  args.insert(args.end(), {"--db", dir.Sub("db"), "--checkpoint-every", "3600"});

  Result<ServerProcess> server = StartServer(args);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ServerClient client(server->endpoint);
  constexpr int kSteps = 3;
  ASSERT_NO_FATAL_FAILURE(TrainSteps(client, kSteps, 0));
  Answer before = Call(client, /*backward=*/false, ForwardBody());
  ASSERT_EQ(before.http_status, 200) << before.error;
  EXPECT_EQ(client.Metric("dmoe_checkpoints_total"), 0.0);

  const int status = server->process->Stop(SIGTERM, 30s);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string log = server->process->stderr_text();
  EXPECT_NE(log.find("final checkpoint written"), std::string::npos) << log;

  Result<ServerProcess> restarted = StartServer(args);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  ServerClient again(restarted->endpoint);
  EXPECT_EQ(again.ExpertStep(kUid), kSteps);
  Answer after = Call(again, /*backward=*/false, ForwardBody());
  ASSERT_EQ(after.http_status, 200) << after.error;
  EXPECT_EQ(after.step, kSteps);
  EXPECT_EQ(after.output, before.output);
}

}  // namespace
}  // namespace dmoe::integration
