#include "expert_server/runtime.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>

#include "expert_server/expert.h"
#include "expert_server/process_memory.h"
#include "expert_server/task.h"

namespace dmoe::expert_server {

struct Runtime::Pending {
  Task task;
  int64_t samples = 0;  // Rows of x: what batches merge, up to max_batch_size.
  int64_t enqueued_us = 0;
  int64_t cost = 0;  // Expert::QueueCost: what counts against max_queue.
};

struct Runtime::Pool {
  std::unique_ptr<Expert> expert;
  int64_t num_parameters = 0;
  std::deque<Pending> queue;
  int64_t queued_samples = 0;
  int64_t queued_cost = 0;  // Samples, or tokens for sequence experts (max_queue).
  std::atomic<int64_t> step{0};
  bool busy = false;
  // The last batch: when its answers went out, how many tasks it answered, and how many tasks
  // arrived since. Guarded by mu_.
  int64_t answered_at_us = 0;
  int64_t answered_tasks = 0;
  int64_t arrived_since_answered = 0;
};

namespace {

bool Compatible(const Task& a, const Task& b) {
  return a.kind == b.kind && a.x.scalar_type() == b.x.scalar_type() &&
         a.x.sizes().slice(1) == b.x.sizes().slice(1) && a.mask.has_value() == b.mask.has_value();
}

}  // namespace

Runtime::Runtime(std::vector<std::unique_ptr<Expert>> experts, RuntimeOptions options)
    : options_(options), clock_(*options.clock) {
  for (auto& e : experts) {
    auto pool = std::make_unique<Pool>();
    pool->step = e->step();
    pool->num_parameters = e->num_parameters();
    std::string uid = e->uid();
    pool->expert = std::move(e);
    pools_.emplace(uid, std::move(pool));
  }
}

Runtime::~Runtime() { Stop(); }

void Runtime::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ || stopping_) return;
  started_ = true;
  for (int i = 0; i < std::max(1, options_.threads); ++i) threads_.emplace_back([this] { Loop(); });
}

void Runtime::Stop() {
  std::vector<Pending> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    for (auto& [uid, pool] : pools_) {
      for (auto& p : pool->queue) dropped.push_back(std::move(p));
      pool->queue.clear();
      pool->queued_samples = 0;
      pool->queued_cost = 0;
    }
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  for (auto& p : dropped) p.task.done(UnavailableError("the server is shutting down"));
  // Exclusive work queued after the threads left still has a waiter; run it here.
  std::deque<std::function<void()>> exclusive;
  {
    std::lock_guard<std::mutex> lock(mu_);
    exclusive.swap(exclusive_);
  }
  for (auto& fn : exclusive) fn();
}

Status Runtime::Submit(const std::string& uid, Task task) {
  auto it = pools_.find(uid);
  if (it == pools_.end()) return NotFoundError("expert " + uid + " is not hosted here");
  Pool& pool = *it->second;
  // The schema check reads only immutable facts of the expert, so it is safe off the runtime.
  DMOE_RETURN_IF_ERROR(pool.expert->CheckInput(task.x, task.mask));
  if (task.kind == TaskKind::kBackward && (task.grad_y.sizes() != task.x.sizes() ||
                                           task.grad_y.scalar_type() != task.x.scalar_type())) {
    return InvalidArgumentError("grad_y must have the shape and dtype of x");
  }
  const int64_t samples = task.x.size(0);
  // Sequence experts count tokens: what a request costs grows with T as well as B.
  const int64_t cost = pool.expert->QueueCost(task.x);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return UnavailableError("the server is shutting down");
  if (pool.queued_cost + cost > options_.max_queue && pool.queued_cost > 0) {
    ++stats_.refused_overload;
    const bool tokens = task.x.dim() == 3;
    return ResourceExhaustedError("expert " + uid + " has " + std::to_string(pool.queued_cost) +
                                  (tokens ? " tokens" : " samples") + " queued (limit " +
                                  std::to_string(options_.max_queue) + "); retry later");
  }
  pool.queue.push_back(Pending{std::move(task), samples, NowUs(), cost});
  pool.queued_samples += samples;
  pool.queued_cost += cost;
  ++pool.arrived_since_answered;
  cv_.notify_one();
  return Status::Ok();
}

Status Runtime::RunExclusive(const std::function<void(std::map<std::string, Expert*>&)>& fn) {
  std::promise<void> done;
  auto job = [&] {
    std::map<std::string, Expert*> experts;
    for (auto& [uid, pool] : pools_) experts[uid] = pool->expert.get();
    fn(experts);
    done.set_value();
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || threads_.empty()) {
      // Nothing else runs the experts: do it here.
      job();
      return Status::Ok();
    }
    exclusive_.push_back(job);
  }
  cv_.notify_all();
  done.get_future().wait();
  return Status::Ok();
}

Runtime::Pool* Runtime::PickLocked(int64_t now_us, int64_t* wait_until_us) {
  Pool* best = nullptr;
  int64_t best_age = -1;
  *wait_until_us = INT64_MAX;
  for (auto& [uid, pool] : pools_) {
    if (pool->busy || pool->queue.empty()) continue;
    const Pending& head = pool->queue.front();
    int64_t compatible = 0;
    for (const Pending& p : pool->queue) {
      if (!Compatible(p.task, head.task)) break;
      compatible += p.samples;
    }
    int64_t due_at = 0;
    bool due = compatible >= options_.max_batch_size;
    if (head.enqueued_us < pool->answered_at_us) {
      // The head waited through the last batch: wait for that batch's requesters first.
      due_at = pool->answered_at_us + options_.batch_timeout_us;
      due = due || now_us >= due_at || pool->arrived_since_answered >= pool->answered_tasks;
    } else {
      due_at = head.enqueued_us + options_.batch_timeout_us;
      due = due || now_us >= due_at ||
            compatible < pool->queued_samples;  // an incompatible task waits behind
    }
    if (!due) {
      *wait_until_us = std::min(*wait_until_us, due_at);
      continue;
    }
    const int64_t age = now_us - head.enqueued_us;
    if (age > best_age) {
      best_age = age;
      best = pool.get();
    }
  }
  return best;
}

void Runtime::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (!exclusive_.empty() && busy_pools_ == 0 && !exclusive_running_) {
      auto job = std::move(exclusive_.front());
      exclusive_.pop_front();
      exclusive_running_ = true;
      lock.unlock();
      job();
      lock.lock();
      exclusive_running_ = false;
      cv_.notify_all();
      continue;
    }
    int64_t wait_until = INT64_MAX;
    Pool* pool =
        (exclusive_.empty() && !exclusive_running_) ? PickLocked(NowUs(), &wait_until) : nullptr;
    if (pool == nullptr) {
      if (wait_until == INT64_MAX) {
        cv_.wait(lock);
      } else {
        cv_.wait_for(lock, std::chrono::microseconds(std::max<int64_t>(1, wait_until - NowUs())));
      }
      continue;
    }
    std::vector<Pending> batch;
    int64_t samples = 0, cost = 0;
    while (!pool->queue.empty()) {
      Pending& next = pool->queue.front();
      if (!batch.empty() && (!Compatible(next.task, batch.front().task) ||
                             samples + next.samples > options_.max_batch_size)) {
        break;
      }
      samples += next.samples;
      cost += next.cost;
      batch.push_back(std::move(next));
      pool->queue.pop_front();
    }
    pool->queued_samples -= samples;
    pool->queued_cost -= cost;
    pool->busy = true;
    ++busy_pools_;
    lock.unlock();
    RunBatch(*pool, std::move(batch));
    lock.lock();
    pool->busy = false;
    --busy_pools_;
    cv_.notify_all();
  }
}

void Runtime::RunBatch(Pool& pool, std::vector<Pending> batch) {
  Expert& expert = *pool.expert;
  const TaskKind kind = batch.front().task.kind;
  const int64_t tasks = static_cast<int64_t>(batch.size());
  int64_t refused_nonfinite = 0, refused_stale = 0, samples = 0;
  // Answers are delivered after the stats are updated, so a caller that saw its answer also sees
  // the batch counted.
  std::vector<std::pair<Pending, Result<TaskResult>>> answers;
  // Refuse bad tasks one by one so that they do not spoil the batch they were merged into.
  std::vector<Pending> good;
  for (Pending& p : batch) {
    if (kind == TaskKind::kBackward) {
      if (options_.max_staleness >= 0 && p.task.step_seen.has_value() &&
          expert.step() - *p.task.step_seen > options_.max_staleness) {
        ++refused_stale;
        Status s = InvalidArgumentError("gradient is stale: computed at step " +
                                        std::to_string(*p.task.step_seen) + ", expert is at step " +
                                        std::to_string(expert.step()) + ", max staleness " +
                                        std::to_string(options_.max_staleness));
        answers.emplace_back(std::move(p), s);
        continue;
      }
      if (!AllFinite(p.task.x) || !AllFinite(p.task.grad_y)) {
        ++refused_nonfinite;
        answers.emplace_back(
            std::move(p), InvalidArgumentError("x or grad_y holds NaN or Inf; gradient refused"));
        continue;
      }
    }
    good.push_back(std::move(p));
  }
  if (!good.empty()) {
    std::vector<at::Tensor> xs, gs, ms;
    for (Pending& p : good) {
      xs.push_back(p.task.x);
      if (kind == TaskKind::kBackward) gs.push_back(p.task.grad_y);
      if (p.task.mask.has_value()) ms.push_back(*p.task.mask);
      samples += p.samples;
    }
    at::Tensor x = xs.size() == 1 ? xs[0] : at::cat(xs, 0);
    std::optional<at::Tensor> mask;
    if (!ms.empty()) mask = ms.size() == 1 ? ms[0] : at::cat(ms, 0);
    Result<at::Tensor> out =
        kind == TaskKind::kForward
            ? expert.Forward(x, mask)
            : expert.Backward(x, gs.size() == 1 ? gs[0] : at::cat(gs, 0), mask);
    const int64_t step = expert.step();
    pool.step = step;
    if (!out.ok() && kind == TaskKind::kBackward && out.status().code() == Code::kInvalidArgument) {
      refused_nonfinite += static_cast<int64_t>(good.size());
    }
    int64_t offset = 0;
    for (Pending& p : good) {
      if (!out.ok()) {
        answers.emplace_back(std::move(p), out.status());
        continue;
      }
      at::Tensor part = good.size() == 1 ? *out : out->narrow(0, offset, p.samples).contiguous();
      offset += p.samples;
      answers.emplace_back(std::move(p), TaskResult{part, step});
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Before the answers go out, so that the tasks their requesters send next count as arrived.
    pool.answered_at_us = NowUs();
    pool.answered_tasks = tasks;
    pool.arrived_since_answered = 0;
    ++stats_.batches;
    stats_.tasks += tasks;
    stats_.samples += samples;
    stats_.refused_nonfinite += refused_nonfinite;
    stats_.refused_stale += refused_stale;
  }
  if (options_.on_batch && samples > 0) options_.on_batch(samples);
  for (auto& [p, result] : answers) p.task.done(std::move(result));
}

std::vector<std::string> Runtime::uids() const {
  std::vector<std::string> out;
  for (const auto& [uid, pool] : pools_) out.push_back(uid);
  return out;
}

bool Runtime::Hosts(const std::string& uid) const { return pools_.count(uid) > 0; }

int64_t Runtime::step(const std::string& uid) const {
  auto it = pools_.find(uid);
  return it == pools_.end() ? -1 : it->second->step.load();
}

int64_t Runtime::queued_samples(const std::string& uid) const {
  auto it = pools_.find(uid);
  if (it == pools_.end()) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  return it->second->queued_samples;
}

double Runtime::load() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t queued = 0;
  for (const auto& [uid, pool] : pools_) queued += pool->queued_cost;
  double capacity = static_cast<double>(options_.max_queue) * static_cast<double>(pools_.size());
  return capacity > 0 ? std::min(1.0, static_cast<double>(queued) / capacity) : 0.0;
}

int64_t Runtime::num_parameters(const std::string& uid) const {
  auto it = pools_.find(uid);
  return it == pools_.end() ? 0 : it->second->num_parameters;
}

int64_t Runtime::NowUs() const { return clock_.NowMonotonicUs(); }

RuntimeStats Runtime::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Declared in process_memory.h with the rest of the process's set-up; defined here, in a file that
// compiles against ATen anyway.
void SetComputeThreads(int threads) { at::set_num_threads(threads); }

}  // namespace dmoe::expert_server
