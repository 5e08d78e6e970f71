// Multi-process tests: a checkpoint_writer child saves checkpoints in a loop and is killed with
// SIGKILL at random moments; after every kill the store must hold the last acknowledged checkpoint
// (or the one in flight), whole.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "storage/expert_store.h"
#include "storage/kv_store.h"
#include "tests/storage/test_util.h"
#include "tests/testing/process.h"

namespace dmoe::storage {
namespace {

using testing::DiffFromExpected;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr char kUid[] = "ffn.7.1";
// Generous: a child that has not acknowledged anything for this long is stuck, and the test fails
// instead of hanging.
constexpr auto kStallLimit = std::chrono::seconds(60);

// A running checkpoint_writer and the read end of its acknowledgement pipe.
class Writer {
 public:
  explicit Writer(const std::string& dir) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2: " << std::strerror(errno);
      return;
    }
    read_fd_ = fds[0];
    // Only the write end crosses exec.
    dmoe::testing::SpawnOptions options;
    options.keep_fds = {fds[1]};
    auto spawned = dmoe::testing::Process::Spawn(
        {DMOE_CHECKPOINT_WRITER, dir, kUid, std::to_string(fds[1])}, options);
    ::close(fds[1]);
    if (!spawned.ok()) {
      ADD_FAILURE() << spawned.status().ToString();
      return;
    }
    process_ = std::move(spawned).value();
  }

  ~Writer() {
    process_.reset();  // SIGKILL and reap when still running
    if (read_fd_ >= 0) ::close(read_fd_);
  }

  bool started() const { return process_ != nullptr && read_fd_ >= 0; }

  // Reads whatever acknowledgements are available within `timeout_ms` (-1: until at least one byte
  // or EOF) and appends them to acks_. False on EOF (the child is gone).
  bool ReadAcks(int timeout_ms) {
    pollfd pfd{read_fd_, POLLIN, 0};
    int ready = ::poll(&pfd, 1, timeout_ms);
    if (ready <= 0) return true;
    char chunk[512];
    ssize_t n = ::read(read_fd_, chunk, sizeof(chunk));
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    if (n == 0) return false;
    pending_.append(chunk, static_cast<size_t>(n));
    while (pending_.size() >= sizeof(int64_t)) {
      int64_t step;
      std::memcpy(&step, pending_.data(), sizeof(step));
      acks_.push_back(step);
      ack_times_.push_back(Clock::now());
      pending_.erase(0, sizeof(step));
    }
    return true;
  }

  // Waits for `count` acknowledgements in total; false when the child died or stalled first.
  bool WaitForAcks(size_t count) {
    auto deadline = Clock::now() + kStallLimit;
    while (acks_.size() < count) {
      if (Clock::now() > deadline || !ReadAcks(1000)) return false;
    }
    return true;
  }

  // Kills the child, then drains the pipe: an acknowledgement written before death counts.
  // Returns the wait status.
  int KillAndReap() {
    process_->Signal(SIGKILL);
    while (ReadAcks(-1)) {
    }
    return process_->Stop(SIGKILL, std::chrono::seconds(30));
  }

  // What the child wrote to stderr (its reason when it exits by itself).
  std::string log() const { return process_ ? process_->stderr_text() : ""; }
  const std::vector<int64_t>& acks() const { return acks_; }
  const std::vector<Clock::time_point>& ack_times() const { return ack_times_; }

 private:
  std::unique_ptr<dmoe::testing::Process> process_;
  int read_fd_ = -1;
  std::string pending_;
  std::vector<int64_t> acks_;
  std::vector<Clock::time_point> ack_times_;
};

uint64_t Seed() {
  if (const char* env = std::getenv("DMOE_CRASH_SEED")) return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

TEST(CheckpointCrashTest, KillNineNeverLosesAnAcknowledgedCheckpointNorTearsOne) {
  TempDir dir;
  const uint64_t seed = Seed();
  SCOPED_TRACE("DMOE_CRASH_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  // The latest step in the store as the parent last saw it; -1 for none.
  int64_t base = -1;
  int kills_before_first_ack = 0;
  int in_flight_committed = 0;
  // Mean time between acknowledgements, i.e. one save cycle, measured as the test runs.
  Clock::duration cycle_sum{0};
  int cycles = 0;
  const auto start = Clock::now();

  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // The moment of the kill: after 0 to 5 acknowledgements (0 can land while the store is opening
    // and recovering), then at a uniformly random point of the next save cycle (preparing tensors,
    // hashing, writing, fsync), so that over the rounds kills land in every phase of a save.
    const size_t acks_wanted = std::uniform_int_distribution<size_t>(0, 5)(rng);
    const int64_t cycle_us =
        cycles == 0
            ? 10'000
            : std::chrono::duration_cast<std::chrono::microseconds>(cycle_sum / cycles).count();
    const auto delay =
        std::chrono::microseconds(std::uniform_int_distribution<int64_t>(0, cycle_us)(rng));

    Writer writer(dir.path());
    ASSERT_TRUE(writer.started());
    ASSERT_TRUE(writer.WaitForAcks(acks_wanted)) << "the writer died or stalled; its stderr:\n"
                                                 << writer.log();
    const auto kill_at = Clock::now() + delay;
    while (Clock::now() < kill_at) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - Clock::now());
      ASSERT_TRUE(writer.ReadAcks(static_cast<int>(left.count())))
          << "the writer died early; its stderr:\n"
          << writer.log();
    }
    const int status = writer.KillAndReap();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer ended by itself (status " << status << "); its stderr:\n"
        << writer.log();
    if (writer.acks().empty()) ++kills_before_first_ack;
    for (size_t i = 1; i < writer.ack_times().size(); ++i) {
      cycle_sum += writer.ack_times()[i] - writer.ack_times()[i - 1];
      ++cycles;
    }

    // The child saves base+1, base+2, ... and acknowledges each in order.
    for (size_t i = 0; i < writer.acks().size(); ++i) {
      ASSERT_EQ(writer.acks()[i], base + 1 + static_cast<int64_t>(i));
    }
    const int64_t acked = writer.acks().empty() ? base : writer.acks().back();

    auto store = ExpertStore::Open(dir.path(), {.clock = &RealClock::Instance()});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    Result<Checkpoint> latest = (*store)->LoadLatest(kUid);
    if (acked < 0 && latest.status().code() == Code::kNotFound) {
      continue;  // Killed before the first checkpoint was ever written.
    }
    ASSERT_TRUE(latest.ok()) << latest.status().ToString();
    // Never older than the last acknowledged one; at most the one that was being written.
    EXPECT_GE(latest->step, acked) << "an acknowledged checkpoint was lost";
    EXPECT_LE(latest->step, acked + 1);
    EXPECT_EQ(DiffFromExpected(*latest), "");
    if (latest->step == acked + 1) ++in_flight_committed;
    // The older kept versions must be whole too.
    auto experts = (*store)->ListExperts();
    ASSERT_TRUE(experts.ok()) << experts.status().ToString();
    ASSERT_EQ(experts->size(), 1u);
    EXPECT_LE(experts->front().steps.size(), 3u);
    EXPECT_EQ(experts->front().latest_step, latest->step);
    for (int64_t step : experts->front().steps) {
      Result<Checkpoint> version = (*store)->Load(kUid, step);
      ASSERT_TRUE(version.ok()) << version.status().ToString();
      EXPECT_EQ(DiffFromExpected(*version), "");
    }
    base = latest->step;
    ASSERT_TRUE((*store)->Close().ok());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "[ crash    ] 20 kills in %.2f s; last step %lld; %d kills before the round's first ack; "
      "%d found the unacknowledged checkpoint committed\n",
      seconds, static_cast<long long>(base), kills_before_first_ack, in_flight_committed);
}

TEST(CheckpointCrashTest, SecondProcessGetsLockErrorWhileWriterRuns) {
  TempDir dir;
  Writer writer(dir.path());
  ASSERT_TRUE(writer.started());
  ASSERT_TRUE(writer.WaitForAcks(1));

  const std::string expected =
      "database " + dir.path() + " is in use by another process (lock held)";
  auto store = ExpertStore::Open(dir.path(), {.clock = &RealClock::Instance()});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), Code::kUnavailable);
  EXPECT_EQ(store.status().message(), expected);
  auto kv = KvStore::Open(dir.path());
  ASSERT_FALSE(kv.ok());
  EXPECT_EQ(kv.status().code(), Code::kUnavailable);

  writer.KillAndReap();
  auto reopened = ExpertStore::Open(dir.path(), {.clock = &RealClock::Instance()});
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
}

}  // namespace
}  // namespace dmoe::storage
