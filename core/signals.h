// Clean shutdown on SIGINT/SIGTERM for every executable: block the signals first thing in main,
// before any thread starts (threads inherit the mask; libtorch's and OpenMP's threads start as soon
// as at::set_num_threads runs), then wait for one synchronously, or on a watcher thread.
#ifndef DMOE_CORE_SIGNALS_H_
#define DMOE_CORE_SIGNALS_H_

#include <functional>
#include <thread>

namespace dmoe {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards.
void BlockTerminationSignals();
// Waits for SIGINT or SIGTERM (blocked by BlockTerminationSignals) and returns its number.
int WaitForTerminationSignal();

// Waits on a thread of its own for SIGINT or SIGTERM (blocked by BlockTerminationSignals) and calls
// `on_signal(number)` once, on that thread. Stop() (or the destructor) ends the wait without a
// signal, so a program that finished by itself never sends itself one. Not copyable; Stop is
// idempotent and must not be called from `on_signal`.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  void Stop();

 private:
  int signal_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
};

}  // namespace dmoe

#endif  // DMOE_CORE_SIGNALS_H_
