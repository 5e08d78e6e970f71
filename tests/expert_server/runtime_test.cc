#include "expert_server/runtime.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <thread>

#include "core/clock.h"
#include "expert_server/expert.h"
#include "expert_server/task.h"

namespace dmoe::expert_server {
namespace {

constexpr int64_t kExpertDim = 8;

std::unique_ptr<Expert> MakeExpert(const std::string& uid) {
  ExpertConfig config;
  config.hidden_dim = kExpertDim;
  config.seed = 3;
  return std::move(Expert::Create(ExpertRegistry::WithBuiltins(), uid, config, OptimizerOptions{}))
      .value();
}

// On the real clock unless the test gives another: a partial batch is due in real time.
std::unique_ptr<Runtime> MakeRuntime(RuntimeOptions options,
                                     std::vector<std::string> uids = {"ffn.0"}) {
  if (options.clock == nullptr) options.clock = &RealClock::Instance();
  std::vector<std::unique_ptr<Expert>> experts;
  for (auto& uid : uids) experts.push_back(MakeExpert(uid));
  return std::make_unique<Runtime>(std::move(experts), options);
}

// Collects the answer of one task.
struct Answer {
  std::promise<Result<TaskResult>> promise;
  std::future<Result<TaskResult>> future = promise.get_future();
  Result<TaskResult> Get() {
    EXPECT_EQ(future.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    return future.get();
  }
};

Task ForwardTask(at::Tensor x, Answer& answer) {
  Task t;
  t.x = std::move(x);
  t.done = [&answer](Result<TaskResult> r) { answer.promise.set_value(std::move(r)); };
  return t;
}

Task BackwardTask(at::Tensor x, at::Tensor g, Answer& answer,
                  std::optional<int64_t> step_seen = {}) {
  Task t = ForwardTask(std::move(x), answer);
  t.kind = TaskKind::kBackward;
  t.grad_y = std::move(g);
  t.step_seen = step_seen;
  return t;
}

TEST(RuntimeTest, ConcurrentRequestsMergeIntoOneBatchAndSplitBack) {
  auto rt = MakeRuntime(RuntimeOptions{});
  auto reference = MakeExpert("ffn.0");
  std::vector<at::Tensor> xs;
  std::vector<Answer> answers(8);
  for (int i = 0; i < 8; ++i) {
    xs.push_back(at::randn({4, kExpertDim}));
    ASSERT_TRUE(rt->Submit("ffn.0", ForwardTask(xs.back(), answers[i])).ok());
  }
  rt->Start();
  for (int i = 0; i < 8; ++i) {
    Result<TaskResult> r = answers[i].Get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(at::allclose(r->output, *reference->Forward(xs[i], std::nullopt), 1e-5, 1e-6));
    EXPECT_EQ(r->step, 0);
  }
  RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.batches, 1);
  EXPECT_EQ(stats.tasks, 8);
  EXPECT_EQ(stats.samples, 32);
}

// Remote clients get their answers back one by one and resubmit after a round trip. A task that
// waited through a batch must not run alone at once when that batch's requesters are about to
// send theirs: it waits for them (up to the batch timeout), and all run as one batch. Here the
// requesters of a forward batch answer from another thread, as a network would, with backward
// tasks; a backward task S queued behind that forward batch has waited longer than the timeout.
TEST(RuntimeTest, ATaskThatWaitedThroughABatchWaitsForThatBatchsRequesters) {
  FakeClock clock;
  RuntimeOptions options;
  options.batch_timeout_us = 200'000;
  options.clock = &clock;
  auto rt = MakeRuntime(options);
  std::vector<Answer> forward(2), backward(3);
  std::mutex mu;
  std::condition_variable cv;
  int forwards_answered = 0;
  auto requester = [&](int i) {
    Task t = ForwardTask(at::randn({4, kExpertDim}), forward[i]);
    t.done = [&, i](Result<TaskResult> r) {
      forward[i].promise.set_value(std::move(r));
      std::lock_guard<std::mutex> lock(mu);
      ++forwards_answered;
      cv.notify_all();
    };
    return t;
  };
  ASSERT_TRUE(rt->Submit("ffn.0", requester(0)).ok());
  ASSERT_TRUE(rt->Submit("ffn.0", requester(1)).ok());
  ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({4, kExpertDim}),
                                               at::randn({4, kExpertDim}) * 1e-3, backward[0]))
                  .ok());
  // S is now older than the batch timeout, so the plain timeout rule would run it the moment the
  // forward batch is done. (The fake clock stands still from here: only arrivals end a wait.)
  clock.AdvanceUs(options.batch_timeout_us + 1);
  rt->Start();
  std::thread network([&] {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(30), [&] { return forwards_answered == 2; }));
    lock.unlock();
    for (int i = 1; i <= 2; ++i) {
      EXPECT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({4, kExpertDim}),
                                                   at::randn({4, kExpertDim}) * 1e-3, backward[i]))
                      .ok());
    }
  });
  network.join();
  for (Answer& a : forward) ASSERT_TRUE(a.Get().ok());
  for (Answer& a : backward) ASSERT_TRUE(a.Get().ok());
  RuntimeStats stats = rt->stats();
  EXPECT_EQ(stats.batches, 2);  // the two forwards, then S with both requesters' backwards
  EXPECT_EQ(stats.tasks, 5);
}

TEST(RuntimeTest, BatchesNeverExceedMaxBatchSize) {
  RuntimeOptions options;
  options.max_batch_size = 8;
  auto rt = MakeRuntime(options);
  std::vector<Answer> answers(8);
  for (int i = 0; i < 8; ++i)
    ASSERT_TRUE(rt->Submit("ffn.0", ForwardTask(at::randn({4, kExpertDim}), answers[i])).ok());
  rt->Start();
  for (auto& a : answers) ASSERT_TRUE(a.Get().ok());
  EXPECT_EQ(rt->stats().batches, 4);
}

TEST(RuntimeTest, RefusesPastTheQueueLimitWithoutCallingDone) {
  RuntimeOptions options;
  options.max_queue = 10;
  auto rt = MakeRuntime(options);
  std::vector<Answer> answers(3);
  ASSERT_TRUE(rt->Submit("ffn.0", ForwardTask(at::randn({4, kExpertDim}), answers[0])).ok());
  ASSERT_TRUE(rt->Submit("ffn.0", ForwardTask(at::randn({4, kExpertDim}), answers[1])).ok());
  Status s = rt->Submit("ffn.0", ForwardTask(at::randn({4, kExpertDim}), answers[2]));
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(rt->stats().refused_overload, 1);
  EXPECT_DOUBLE_EQ(rt->load(), 0.8);
  rt->Start();
  EXPECT_TRUE(answers[0].Get().ok());
  EXPECT_TRUE(answers[1].Get().ok());
  EXPECT_EQ(answers[2].future.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
}

// A transformer expert's queue counts tokens (B * T), not samples.
TEST(RuntimeTest, SequenceExpertQueueCountsTokens) {
  ExpertConfig config;
  config.type = "transformer";
  config.hidden_dim = kExpertDim;
  auto expert = Expert::Create(ExpertRegistry::WithBuiltins(), "tf.0", config, OptimizerOptions{});
  ASSERT_TRUE(expert.ok()) << expert.status().ToString();
  std::vector<std::unique_ptr<Expert>> experts;
  experts.push_back(std::move(expert).value());
  RuntimeOptions options;
  options.max_queue = 40;
  options.clock = &RealClock::Instance();
  Runtime rt(std::move(experts), options);
  std::vector<Answer> answers(3);
  // 2 samples of 10 tokens each: 20 tokens, twice fits 40.
  ASSERT_TRUE(rt.Submit("tf.0", ForwardTask(at::randn({2, 10, kExpertDim}), answers[0])).ok());
  ASSERT_TRUE(rt.Submit("tf.0", ForwardTask(at::randn({2, 10, kExpertDim}), answers[1])).ok());
  Status s = rt.Submit("tf.0", ForwardTask(at::randn({1, 2, kExpertDim}), answers[2]));
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_NE(s.message().find("40 tokens queued"), std::string::npos) << s.ToString();
  EXPECT_DOUBLE_EQ(rt.load(), 1.0);
  EXPECT_EQ(rt.queued_samples("tf.0"), 4);
  rt.Start();
  EXPECT_TRUE(answers[0].Get().ok());
  EXPECT_TRUE(answers[1].Get().ok());
}

TEST(RuntimeTest, RefusesUnknownUidAndBadSchemaSynchronously) {
  auto rt = MakeRuntime(RuntimeOptions{});
  Answer a, b;
  EXPECT_EQ(rt->Submit("ffn.9", ForwardTask(at::randn({1, kExpertDim}), a)).code(),
            Code::kNotFound);
  EXPECT_EQ(rt->Submit("ffn.0", ForwardTask(at::randn({1, kExpertDim + 1}), b)).code(),
            Code::kInvalidArgument);
}

TEST(RuntimeTest, NanTaskIsRefusedAloneAndTheRestOfItsBatchSteps) {
  auto rt = MakeRuntime(RuntimeOptions{});
  Answer good, bad;
  at::Tensor g = at::randn({2, kExpertDim});
  at::Tensor nan_g = g.clone();
  nan_g[0][0] = std::numeric_limits<float>::quiet_NaN();
  ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({2, kExpertDim}), g, good)).ok());
  ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({2, kExpertDim}), nan_g, bad)).ok());
  rt->Start();
  Result<TaskResult> ok = good.Get();
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->step, 1);
  EXPECT_EQ(bad.Get().status().code(), Code::kInvalidArgument);
  EXPECT_EQ(rt->stats().refused_nonfinite, 1);
  EXPECT_EQ(rt->step("ffn.0"), 1);
}

TEST(RuntimeTest, RefusesStaleGradients) {
  RuntimeOptions options;
  options.max_staleness = 1;
  auto rt = MakeRuntime(options);
  rt->Start();
  for (int i = 0; i < 3; ++i) {
    Answer a;
    ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({1, kExpertDim}),
                                                 at::randn({1, kExpertDim}), a, i))
                    .ok());
    ASSERT_TRUE(a.Get().ok());
  }
  Answer stale, fresh;
  ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({1, kExpertDim}),
                                               at::randn({1, kExpertDim}), stale, 1))
                  .ok());
  Result<TaskResult> r = stale.Get();
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("stale"), std::string::npos);
  ASSERT_TRUE(rt->Submit("ffn.0", BackwardTask(at::randn({1, kExpertDim}),
                                               at::randn({1, kExpertDim}), fresh, 2))
                  .ok());
  EXPECT_TRUE(fresh.Get().ok());
  EXPECT_EQ(rt->stats().refused_stale, 1);
  EXPECT_EQ(rt->step("ffn.0"), 4);
}

TEST(RuntimeTest, StopFailsQueuedTasksWithUnavailable) {
  auto rt = MakeRuntime(RuntimeOptions{});
  Answer a;
  ASSERT_TRUE(rt->Submit("ffn.0", ForwardTask(at::randn({1, kExpertDim}), a)).ok());
  rt->Stop();
  EXPECT_EQ(a.Get().status().code(), Code::kUnavailable);
  Answer b;
  EXPECT_EQ(rt->Submit("ffn.0", ForwardTask(at::randn({1, kExpertDim}), b)).code(),
            Code::kUnavailable);
}

TEST(RuntimeTest, RunExclusiveSeesEveryExpert) {
  auto rt = MakeRuntime(RuntimeOptions{}, {"ffn.0", "ffn.1"});
  rt->Start();
  std::vector<std::string> seen;
  ASSERT_TRUE(rt->RunExclusive([&](std::map<std::string, Expert*>& experts) {
                  for (auto& [uid, e] : experts)
                    seen.push_back(uid + "@" + std::to_string(e->step()));
                }).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"ffn.0@0", "ffn.1@0"}));
}

}  // namespace
}  // namespace dmoe::expert_server
