// A real dmoe-server against poison (issue 12, part 5): a rogue trainer's enormous but finite
// gradients never leave a non-finite weight or optimizer state in the server or in its checkpoint
// (read back through dmoe::storage), and it goes on answering; a corrupt newest checkpoint is
// skipped for the newest intact one at start; a malformed uid in a path is a 400.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstring>

#include "storage/checkpoint_format.h"
#include "storage/database.h"
#include "storage/expert_store.h"
#include "tests/hostile/rogue_server.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;
using integration::ServerClient;
using integration::ServerProcess;

constexpr int kDim = 32;
constexpr char kUid[] = "ffn.0.0";

ServerProcess Start(const std::string& db, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = integration::BaseServerArgs(kUid, kDim);
  args.insert(args.end(), {"--db", db});
  args.insert(args.end(), extra.begin(), extra.end());
  auto s = integration::StartServer(args);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : ServerProcess{};
}

// SIGTERM: the server checkpoints every expert on the way out. True when it exited with 0.
bool Shutdown(ServerProcess& s) {
  const int status = s.process->Stop(SIGTERM, 30s);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Every F32 tensor of the newest checkpoint of kUid holds only finite values; its step in *step.
void ExpectFiniteCheckpoint(const std::string& db, int64_t* step) {
  auto store =
      storage::ExpertStore::Open(db, {.create_if_missing = false, .clock = &RealClock::Instance()});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  Result<storage::Checkpoint> cp = (*store)->LoadLatest(kUid);
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  *step = cp->step;
  int checked = 0;
  for (const storage::NamedTensor& t : cp->tensors) {
    if (t.dtype != safetensors::DType::kF32) continue;
    ++checked;
    for (size_t i = 0; i + 4 <= t.data.size(); i += 4) {
      float f;
      std::memcpy(&f, t.data.data() + i, 4);
      ASSERT_TRUE(std::isfinite(f)) << t.name << "[" << i / 4 << "] = " << f;
    }
  }
  // Parameters (6 of the ffn) and Adam's m and v of each.
  EXPECT_EQ(checked, 18);
}

std::vector<uint8_t> HonestForward() {
  return integration::EncodeF32({integration::Pattern("x", {2, kDim}, 3)});
}
std::vector<uint8_t> HonestBackward(uint64_t seed) {
  return integration::EncodeF32({integration::Pattern("x", {2, kDim}, seed),
                                 integration::Pattern("grad_y", {2, kDim}, seed + 1)});
}

class PoisonServerTest : public ::testing::Test {
 protected:
  testing::TempDir dir_{"dmoe-poison-server"};
};

// With the default gradient clip: gradients of 1e38 and 3e38 overflow already in the gradients of
// the weights and are refused (400); 1e30, 1e24 and 1e10 are finite there and are clipped into an
// ordinary step (200). Either way nothing non-finite is kept, and honest calls go on.
TEST_F(PoisonServerTest, HugeGradientsNeverLeaveNonFiniteStateInTheServerOrItsCheckpoint) {
  const std::string db = dir_.Sub("db");
  ServerProcess server = Start(db);
  ASSERT_NE(server.process, nullptr);
  const std::vector<int> statuses =
      SendHugeGradients(server.endpoint, kUid, kDim, {1e38f, 3e38f, 1e30f, 1e24f, 1e10f});
  int64_t accepted = 0;
  for (size_t i = 0; i < statuses.size(); ++i) {
    EXPECT_TRUE(statuses[i] == 200 || statuses[i] == 400) << i << ": " << statuses[i];
    accepted += statuses[i] == 200;
  }
  EXPECT_EQ(statuses[3], 200) << "a gradient of 1e24, finite in every weight, is clipped";
  ServerClient client(server.endpoint);
  EXPECT_EQ(client.ExpertStep(kUid), accepted);
  auto y = client.Forward(kUid, HonestForward());
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  EXPECT_EQ(y->status, 200);
  auto g = client.Backward(kUid, HonestBackward(5));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->status, 200) << g->body_view();
  ASSERT_TRUE(Shutdown(server)) << server.process->stderr_text();
  int64_t step = -1;
  ExpectFiniteCheckpoint(db, &step);
  EXPECT_EQ(step, accepted + 1);
}

// Without clipping, a gradient finite in every weight (grad_y of 1e24) whose square overflows
// Adam's second moment (0.001 * g^2 > 3.4e38) is rolled back: 400 invalid_argument, the step does
// not move, and the next honest gradient trains as usual.
TEST_F(PoisonServerTest, WithoutClippingAnOverflowingUpdateIsRolledBackAndRefused) {
  const std::string db = dir_.Sub("db");
  ServerProcess server = Start(db, {"--grad-clip-norm", "0"});
  ASSERT_NE(server.process, nullptr);
  ServerClient client(server.endpoint);
  ASSERT_EQ(client.Backward(kUid, HonestBackward(9))->status, 200);
  EXPECT_EQ(SendHugeGradients(server.endpoint, kUid, kDim, {1e24f}), std::vector<int>{400});
  EXPECT_EQ(client.ExpertStep(kUid), 1);
  EXPECT_EQ(client.Backward(kUid, HonestBackward(11))->status, 200);
  EXPECT_EQ(client.ExpertStep(kUid), 2);
  ASSERT_TRUE(Shutdown(server)) << server.process->stderr_text();
  int64_t step = -1;
  ExpectFiniteCheckpoint(db, &step);
  EXPECT_EQ(step, 2);
}

TEST_F(PoisonServerTest, CorruptNewestCheckpointFallsBackToTheNewestIntactOne) {
  const std::string db = dir_.Sub("db");
  for (int round = 0; round < 2; ++round) {  // checkpoints at steps 1 and 2
    ServerProcess server = Start(db);
    ASSERT_NE(server.process, nullptr);
    ASSERT_EQ(ServerClient(server.endpoint).Backward(kUid, HonestBackward(20 + round))->status,
              200);
    ASSERT_TRUE(Shutdown(server)) << server.process->stderr_text();
  }
  {
    auto store = storage::ExpertStore::Open(
        db, {.create_if_missing = false, .clock = &RealClock::Instance()});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    ASSERT_EQ(*(*store)->Steps(kUid), (std::vector<int64_t>{1, 2}));
    storage::Database& database = *(*store)->database();
    storage::Database::WriteBatch batch(database);
    ASSERT_TRUE(batch
                    .Put(storage::ColumnFamily::kExperts, storage::format::TensorKey(kUid, 2, 0),
                         std::string_view("bit rot"))
                    .ok());
    ASSERT_TRUE(database.Write(batch, true).ok());
  }
  ServerProcess server = Start(db);
  ASSERT_NE(server.process, nullptr) << "a corrupt newest checkpoint must not stop the server";
  ServerClient client(server.endpoint);
  EXPECT_EQ(client.ExpertStep(kUid), 1);
  const std::string log = server.process->stderr_text();
  EXPECT_NE(log.find("skipping its checkpoint at step 2"), std::string::npos) << log;
  EXPECT_NE(log.find("warn"), std::string::npos) << log;
  EXPECT_EQ(client.Backward(kUid, HonestBackward(30))->status, 200);
}

// PROTOCOL section 1: a path whose uid breaks the grammar is 400 invalid_argument on every route
// that takes a uid; a well-formed uid the server does not host stays 404 not_found.
TEST_F(PoisonServerTest, MalformedUidInAPathIsABadRequest) {
  ServerProcess server = Start(dir_.Sub("db"));
  ASSERT_NE(server.process, nullptr);
  ServerClient client(server.endpoint);
  for (const std::string uid : {"ffn.01", "1ffn.2", "ffn.1.2.3.4.5.6", "ffn.1000000"}) {
    for (const auto& r : {client.Get("/v1/experts/" + uid), client.Forward(uid, HonestForward()),
                          client.Backward(uid, HonestBackward(1))}) {
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      EXPECT_EQ(r->status, 400) << uid << ": " << r->body_view();
      EXPECT_EQ(integration::ErrorCode(*r), "invalid_argument") << uid;
    }
  }
  auto missing = client.Forward("ffn.7.7", HonestForward());
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(integration::ErrorCode(*missing), "not_found");
}

}  // namespace
}  // namespace dmoe::hostile
