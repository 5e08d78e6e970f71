#include "core/signals.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdint>
#include <utility>

namespace dmoe {
namespace {

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void BlockTerminationSignals() {
  sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

SignalWatcher::SignalWatcher(std::function<void(int)> on_signal) {
  sigset_t set = TerminationSignals();
  // The signals stay blocked (BlockTerminationSignals); a signalfd reads them as they become
  // pending for the process, and the eventfd is how Stop wakes the thread instead of a signal.
  signal_fd_ = signalfd(-1, &set, SFD_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  thread_ = std::thread([this, on_signal = std::move(on_signal)] {
    pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    while (true) {
      if (poll(fds, 2, -1) < 0) continue;  // EINTR
      if (fds[1].revents != 0) return;
      if (fds[0].revents != 0) {
        signalfd_siginfo info{};
        if (read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
          on_signal(static_cast<int>(info.ssi_signo));
          return;
        }
      }
    }
  });
}

SignalWatcher::~SignalWatcher() {
  Stop();
  if (signal_fd_ >= 0) close(signal_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void SignalWatcher::Stop() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  ssize_t written = write(wake_fd_, &one, sizeof one);
  (void)written;
  thread_.join();
}

}  // namespace dmoe
