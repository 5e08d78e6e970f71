// The child process of the crash test: writes checkpoints of one expert in an endless loop, each at
// the step after the store's latest, with the contents testing::TensorsForStep gives, and after
// each SaveCheckpoint returns OK writes the step (8 bytes, native order) to the acknowledgement
// descriptor. The parent kills it with SIGKILL at a random moment and checks that no acknowledged
// checkpoint is lost and none is torn.
//
// Usage: checkpoint_writer DB_DIR UID ACK_FD
// Exit status 2 (with a message on stderr) for any error; it never exits on its own otherwise.
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/expert_store.h"
#include "tests/storage/test_util.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "checkpoint_writer: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using dmoe::storage::ExpertStore;
  if (argc != 4) return Fail("usage: checkpoint_writer DB_DIR UID ACK_FD");
  const std::string dir = argv[1];
  const std::string uid = argv[2];
  const int ack_fd = std::atoi(argv[3]);

  auto store = ExpertStore::Open(dir, {.clock = &dmoe::RealClock::Instance()});
  if (!store.ok()) return Fail("open: " + store.status().ToString());
  int64_t step = 0;
  auto latest = (*store)->LoadLatest(uid);
  if (latest.ok()) {
    step = latest->step + 1;
  } else if (latest.status().code() != dmoe::Code::kNotFound) {
    return Fail("load latest: " + latest.status().ToString());
  }

  for (;; ++step) {
    const auto tensors = dmoe::storage::testing::TensorsForStep(step);
    dmoe::Status s = (*store)->SaveCheckpoint(uid, dmoe::storage::RefsOf(tensors), step,
                                              dmoe::storage::testing::MetadataForStep(step));
    if (!s.ok()) return Fail("save step " + std::to_string(step) + ": " + s.ToString());
    // 8 bytes is below PIPE_BUF, so the write is atomic: the parent never sees half an ack.
    ssize_t n;
    do {
      n = ::write(ack_fd, &step, sizeof(step));
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(sizeof(step))) return Fail("ack write failed");
  }
}
