#include "core/signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>

namespace dmoe {
namespace {

TEST(SignalWatcherTest, StopEndsTheWaitWithoutASignal) {
  BlockTerminationSignals();
  std::atomic<int> calls{0};
  SignalWatcher watcher([&calls](int) { ++calls; });
  watcher.Stop();
  watcher.Stop();  // idempotent
  EXPECT_EQ(calls.load(), 0);
  sigset_t pending;
  sigpending(&pending);
  EXPECT_FALSE(sigismember(&pending, SIGTERM)) << "Stop must not send the process a signal";
}

TEST(SignalWatcherTest, ReportsTheSignalThatArrived) {
  BlockTerminationSignals();
  std::promise<int> got;
  SignalWatcher watcher([&got](int sig) { got.set_value(sig); });
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  std::future<int> f = got.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(f.get(), SIGTERM);
  watcher.Stop();
}

}  // namespace
}  // namespace dmoe
