// The compute runtime: a task pool per expert that merges concurrent requests into batches, served
// by runtime thread(s) that always take the pool whose oldest request has waited longest.
//
// Submit is thread-safe and never blocks on compute: network threads call it and get their answer
// later through the task's `done` callback, which runs on a runtime thread and must only post work
// elsewhere (e.g. to a connection's strand). Experts are touched only by runtime threads.
//
// This header is torch-free: a task's tensors are declared in expert_server/task.h, which a caller
// of Submit includes.
#ifndef DMOE_EXPERT_SERVER_RUNTIME_H_
#define DMOE_EXPERT_SERVER_RUNTIME_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/status.h"
#include "expert_server/options.h"

namespace dmoe::expert_server {

enum class TaskKind { kForward, kBackward };

class Expert;
struct Task;  // expert_server/task.h

struct RuntimeStats {
  int64_t batches = 0;
  int64_t tasks = 0;
  int64_t samples = 0;
  int64_t refused_nonfinite = 0;
  int64_t refused_stale = 0;
  int64_t refused_overload = 0;
};

class Runtime {
 public:
  // `options.clock` must be set and outlive the runtime.
  Runtime(std::vector<std::unique_ptr<Expert>> experts, RuntimeOptions options);
  ~Runtime();  // Stops if still running.

  void Start();
  // Fails every queued task with kUnavailable and joins the threads. Idempotent.
  void Stop();

  // Queues a task. kNotFound for an unknown uid, kInvalidArgument for input the expert's schema
  // refuses, kResourceExhausted past max_queue, kUnavailable after Stop: in each case `done` is
  // not called. On OK, `done` is called exactly once, later, from a runtime thread.
  Status Submit(const std::string& uid, Task task);

  // Runs `fn` on a runtime thread with exclusive use of the experts (e.g. to snapshot their state
  // for a checkpoint) and returns when it has run. Must not be called from a runtime thread.
  Status RunExclusive(const std::function<void(std::map<std::string, Expert*>&)>& fn);

  // Read-only facts that network threads may ask for at any time.
  std::vector<std::string> uids() const;
  bool Hosts(const std::string& uid) const;
  int64_t step(const std::string& uid) const;
  int64_t queued_samples(const std::string& uid) const;
  // Parameters of the expert `uid` (0 for a uid not hosted); fixed at construction.
  int64_t num_parameters(const std::string& uid) const;
  // Queued samples (tokens for sequence experts) over max_queue, in [0, 1], for the whole server.
  double load() const;
  RuntimeStats stats() const;
  const RuntimeOptions& options() const { return options_; }

 private:
  // A queued task, and an expert with its queue (defined in runtime.cc).
  struct Pending;
  struct Pool;

  void Loop();
  // Takes a batch of compatible tasks from the pool with the oldest head; nullptr when none is due.
  // Sets *wait_until_us to when the next partial batch becomes due. A partial batch is due
  // batch_timeout_us after its oldest task arrived, at once when a task of another kind waits
  // behind it, or when it is full. But when that oldest task waited through the last batch, the
  // batch first waits, up to batch_timeout_us after the last batch's answers went out, for as many
  // tasks as that batch answered: its requesters, whose next requests are on their way. Without
  // that, remote clients whose answers came back one by one split into two groups that never
  // merged again (in-process clients resubmit within microseconds, remote ones do not).
  Pool* PickLocked(int64_t now_us, int64_t* wait_until_us);
  void RunBatch(Pool& pool, std::vector<Pending> batch);

  int64_t NowUs() const;

  const RuntimeOptions options_;
  const Clock& clock_;
  std::map<std::string, std::unique_ptr<Pool>> pools_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> exclusive_;
  bool stopping_ = false;
  bool started_ = false;
  int64_t busy_pools_ = 0;
  bool exclusive_running_ = false;
  RuntimeStats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_RUNTIME_H_
