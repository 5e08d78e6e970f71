// The generator (router/generation.h) and its torch-free parts: request parsing and limits, the
// sampler, the text shown with stop strings, and the decode loop on a model of local layers (no
// experts): greedy equals the argmax of full forwards, a seed gives the same text alone and
// batched, steps are shared by concurrent generations, limits, versions and Stop.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "data/byte_tokenizer.h"
#include "dht/dht.h"
#include "net/buffer_pool.h"
#include "router/generated_text.h"
#include "router/generation.h"
#include "router/inference.h"
#include "router/sampler.h"
#include "tests/router/token_models.h"
#include "tests/testing/loopback_dht.h"

namespace dmoe::router {
namespace {

// ---------------------------------------------------------------------------------------------
// Parsing and limits

TEST(GenerateParamsTest, ReadsEveryFieldAndDefaultsTheRest) {
  Result<GenerateParams> p = ParseGenerateRequest(
      R"({"prompt": "In the beginning", "max_tokens": 32, "temperature": 0.5, "top_k": 40,
          "top_p": 0.9, "seed": 18446744073709551615, "stop": ["\n", "God"], "stream": true,
          "unknown": {"ignored": 1}})",
      GenerateLimits{});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->prompt, "In the beginning");
  EXPECT_EQ(p->max_tokens, 32);
  EXPECT_EQ(p->temperature, 0.5);
  EXPECT_EQ(p->top_k, 40);
  EXPECT_EQ(p->top_p, 0.9);
  EXPECT_EQ(p->seed, std::optional<uint64_t>(18446744073709551615ull));
  EXPECT_EQ(p->stop, (std::vector<std::string>{"\n", "God"}));
  EXPECT_TRUE(p->stream);

  // Null counts as absent; one stop may be a plain string.
  p = ParseGenerateRequest(
      R"({"prompt": "x", "max_tokens": null, "temperature": null, "top_k": null, "top_p": null,
          "seed": null, "stop": "amen", "stream": null})",
      GenerateLimits{});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const GenerateParams defaults;
  EXPECT_EQ(p->max_tokens, defaults.max_tokens);
  EXPECT_EQ(p->temperature, defaults.temperature);
  EXPECT_EQ(p->top_k, 0);
  EXPECT_EQ(p->top_p, 1.0);
  EXPECT_FALSE(p->seed.has_value());
  EXPECT_EQ(p->stop, std::vector<std::string>{"amen"});
  EXPECT_FALSE(p->stream);
}

TEST(GenerateParamsTest, EachBadFieldIsRefusedNamingIt) {
  struct Case {
    std::string body;
    const char* says;
  };
  const std::string long_prompt(8193, 'a');
  const std::string long_stop(65, 's');
  const Case cases[] = {
      {"prompt", "the body is not valid JSON"},
      {"[1, 2]", "the body must be a JSON object"},
      {"{}", "prompt is missing"},
      {R"({"prompt": 5})", "prompt must be a string, not 5"},
      {R"({"prompt": ""})", "prompt must hold 1..8192 bytes, not 0"},
      {R"({"prompt": ")" + long_prompt + "\"}", "prompt must hold 1..8192 bytes, not 8193"},
      {"{\"prompt\": \"\xff\"}", "the body is not valid JSON"},
      {R"({"prompt": "\ud800"})", "the body is not valid JSON"},
      {R"({"prompt": "a", "max_tokens": 0})", "max_tokens must be in 1..1024, not 0"},
      {R"({"prompt": "a", "max_tokens": 1025})", "max_tokens must be in 1..1024, not 1025"},
      {R"({"prompt": "a", "max_tokens": 2.5})", "max_tokens must be an integer, not 2.5"},
      {R"({"prompt": "a", "max_tokens": "5"})", "max_tokens must be an integer, not \"5\""},
      {R"({"prompt": "a", "max_tokens": 9223372036854775808})", "max_tokens must be an integer"},
      {R"({"prompt": "a", "temperature": -0.1})", "temperature must be in 0..2"},
      {R"({"prompt": "a", "temperature": 2.5})", "temperature must be in 0..2"},
      {R"({"prompt": "a", "temperature": "hot"})", "temperature must be a number"},
      {R"({"prompt": "a", "top_k": -1})", "top_k must be in 0..256 (0: no cut), not -1"},
      {R"({"prompt": "a", "top_k": 257})", "top_k must be in 0..256 (0: no cut), not 257"},
      {R"({"prompt": "a", "top_p": 0})", "top_p must be in (0, 1]"},
      {R"({"prompt": "a", "top_p": 1.5})", "top_p must be in (0, 1]"},
      {R"({"prompt": "a", "seed": -1})", "seed must be an integer in 0..18446744073709551615"},
      {R"({"prompt": "a", "seed": 1.5})", "seed must be an integer"},
      {R"({"prompt": "a", "stop": 5})", "stop must be a string or a list of strings"},
      {R"({"prompt": "a", "stop": ["x", 1]})", "1 is not a string"},
      {R"({"prompt": "a", "stop": [""]})", "stop[0] must hold 1..64 bytes, not 0"},
      {R"({"prompt": "a", "stop": ["x", ")" + long_stop + "\"]}",
       "stop[1] must hold 1..64 bytes, not 65"},
      {R"({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]})",
       "stop holds 5 strings; at most 4 are taken"},
      {R"({"prompt": "a", "stream": "yes"})", "stream must be true or false"},
  };
  for (const Case& c : cases) {
    Result<GenerateParams> p = ParseGenerateRequest(c.body, GenerateLimits{});
    ASSERT_FALSE(p.ok()) << c.body;
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument) << c.body;
    EXPECT_NE(p.status().message().find(c.says), std::string::npos)
        << c.body << " -> " << p.status().message();
  }
}

TEST(GenerateParamsTest, LimitsAreTheCallersAndTheBodyIsBounded) {
  GenerateLimits limits;
  limits.max_tokens = 8;
  limits.max_prompt_bytes = 4;
  EXPECT_TRUE(ParseGenerateRequest(R"({"prompt": "abcd", "max_tokens": 8})", limits).ok());
  EXPECT_NE(ParseGenerateRequest(R"({"prompt": "abcde"})", limits)
                .status()
                .message()
                .find("prompt must hold 1..4 bytes, not 5"),
            std::string::npos);
  EXPECT_NE(ParseGenerateRequest(R"({"prompt": "a", "max_tokens": 9})", limits)
                .status()
                .message()
                .find("max_tokens must be in 1..8, not 9"),
            std::string::npos);
  const std::string big =
      R"({"prompt": "a", "pad": ")" + std::string(kMaxGenerateRequestBytes, ' ') + "\"}";
  EXPECT_EQ(ParseGenerateRequest(big, GenerateLimits{}).status().code(), Code::kPayloadTooLarge);
}

TEST(GenerateParamsTest, CheckRefusesTextThatIsNotUtf8FromOtherFrontEnds) {
  GenerateParams p;
  p.prompt = "caf\xc3";
  Status s = CheckGenerateParams(p, GenerateLimits{});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(), "prompt is not valid UTF-8");
  p.prompt = "caf\xc3\xa9";
  EXPECT_TRUE(CheckGenerateParams(p, GenerateLimits{}).ok());
  p.stop = {"ok", "\xed\xa0\x80"};  // a UTF-16 surrogate written as UTF-8
  EXPECT_EQ(CheckGenerateParams(p, GenerateLimits{}).message(), "stop[1] is not valid UTF-8");
  p.stop = {};
  p.temperature = std::nan("");
  EXPECT_EQ(CheckGenerateParams(p, GenerateLimits{}).code(), Code::kInvalidArgument);
}

TEST(GenerateParamsTest, FinishReasonsHaveTheirWireNames) {
  EXPECT_EQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_EQ(FinishReasonName(FinishReason::kStop), "stop");
  EXPECT_EQ(FinishReasonName(FinishReason::kError), "error");
}

// ---------------------------------------------------------------------------------------------
// Sampling

TEST(TokenSamplerTest, GreedyTakesTheHighestAndTheLowestIdAmongEquals) {
  TokenSampler greedy(0, 0, 1, 1);
  EXPECT_EQ(greedy.Next(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(greedy.Next(std::vector<float>{std::nanf(""), -1}), 1);
  EXPECT_EQ(greedy.Next(std::vector<float>{-INFINITY, -INFINITY}), 0);
}

TEST(TokenSamplerTest, TopKOfOneAndATinyTopPAreGreedyWhateverTheSeed) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -3.0f, 2.0f};
  for (uint64_t seed = 0; seed < 50; ++seed) {
    TokenSampler top_k(1.5, 1, 1, seed), top_p(1.5, 0, 1e-9, seed);
    EXPECT_EQ(top_k.Next(logits), 1) << seed;
    EXPECT_EQ(top_p.Next(logits), 1) << seed;
  }
}

TEST(TokenSamplerTest, TheSameSeedDrawsTheSameTokens) {
  const std::vector<float> flat(256, 0.0f);
  auto draws = [&](uint64_t seed) {
    TokenSampler s(1, 0, 1, seed);
    std::vector<int64_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.Next(flat));
    return out;
  };
  EXPECT_EQ(draws(7), draws(7));
  EXPECT_NE(draws(7), draws(8));
}

// Frequencies of 40000 draws from p = (0.5, 0.3, 0.2), and what temperature, top_k and top_p do
// to them.
TEST(TokenSamplerTest, DrawsFollowTheSoftmaxOfTheKeptTokens) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  auto frequencies = [&](double temperature, int64_t top_k, double top_p) {
    TokenSampler s(temperature, top_k, top_p, 11);
    std::vector<double> f(3, 0);
    constexpr int kDraws = 40000;
    for (int i = 0; i < kDraws; ++i) f[s.Next(logits)] += 1.0 / kDraws;
    return f;
  };
  auto expect_near = [](const std::vector<double>& f, std::vector<double> p) {
    for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(f[i], p[i], 0.01) << "token " << i;
  };
  expect_near(frequencies(1, 0, 1), {0.5, 0.3, 0.2});
  // Temperature 0.5 squares the probabilities: 0.25, 0.09, 0.04 over 0.38.
  expect_near(frequencies(0.5, 0, 1), {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38});
  // top_k 2, and top_p 0.6 (0.5 is not enough, 0.5 + 0.3 is), keep the first two: 5/8 and 3/8.
  std::vector<double> f = frequencies(1, 2, 1);
  expect_near(f, {0.625, 0.375, 0});
  EXPECT_EQ(f[2], 0.0);
  f = frequencies(1, 0, 0.6);
  expect_near(f, {0.625, 0.375, 0});
  EXPECT_EQ(f[2], 0.0);
}

// ---------------------------------------------------------------------------------------------
// The text shown

// Pushes `bytes` one at a time, returning what each push showed.
std::vector<std::string> PushAll(GeneratedText& text, std::string_view bytes) {
  std::vector<std::string> pieces;
  for (unsigned char c : bytes) pieces.push_back(text.Push(c));
  return pieces;
}

TEST(GeneratedTextTest, ShowsWholeCharactersOnly) {
  GeneratedText text({});
  EXPECT_EQ(PushAll(text, "a\xc3\xa9\xe2\x82\xac"),
            (std::vector<std::string>{"a", "", "\xc3\xa9", "", "", "\xe2\x82\xac"}));
  EXPECT_EQ(text.Push(0xff), "\xef\xbf\xbd");
  EXPECT_EQ(text.Push(0xc3), "");
  EXPECT_EQ(text.held_bytes(), 1u);
  EXPECT_EQ(text.Finish(), "\xef\xbf\xbd");  // the incomplete last character
  EXPECT_FALSE(text.stopped());
}

TEST(GeneratedTextTest, AStopSpreadOverTokensCutsTheTextExactlyBeforeIt) {
  GeneratedText text({"the end"});
  std::vector<std::string> pieces = PushAll(text, "and then the end of it");
  std::string shown;
  for (const std::string& p : pieces) shown += p;
  EXPECT_EQ(shown, "and then ");
  EXPECT_TRUE(text.stopped());
  // "the e" waited until it was known; nothing of the stop string ever showed.
  EXPECT_EQ(pieces[8], " ");
  EXPECT_EQ(pieces[15], "");
  EXPECT_EQ(text.Push('x'), "");
  EXPECT_EQ(text.Finish(), "");
}

TEST(GeneratedTextTest, HeldTextThatTurnsOutNotToBeAStopIsShown) {
  GeneratedText text({"abc"});
  EXPECT_EQ(PushAll(text, "xab"), (std::vector<std::string>{"x", "", ""}));
  EXPECT_EQ(text.Push('x'), "abx");
  EXPECT_EQ(PushAll(text, "ab"), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(text.Finish(), "ab");  // the text ended before the stop could complete
  EXPECT_FALSE(text.stopped());
}

TEST(GeneratedTextTest, OverlapsMultiByteStopsAndTheFirstStopToComplete) {
  GeneratedText overlap({"aab"});
  std::string shown;
  for (const std::string& p : PushAll(overlap, "aaab")) shown += p;
  EXPECT_EQ(shown, "a");
  EXPECT_TRUE(overlap.stopped());

  GeneratedText two({"bcd", "c"});
  shown.clear();
  for (const std::string& p : PushAll(two, "abcd")) shown += p;
  EXPECT_EQ(shown, "ab");

  GeneratedText accent({"\xc3\xa9t\xc3\xa9"});
  shown.clear();
  for (const std::string& p : PushAll(accent, "un \xc3\xa9t\xc3\xa9 chaud")) shown += p;
  EXPECT_EQ(shown, "un ");
  EXPECT_TRUE(accent.stopped());

  GeneratedText at_once({"x"});
  EXPECT_EQ(at_once.Push('x'), "");
  EXPECT_TRUE(at_once.stopped());
}

// ---------------------------------------------------------------------------------------------
// The generator

class Collector : public std::enable_shared_from_this<Collector> {
 public:
  // Records every event and returns `keep_reading`. With `hold`, the first event waits (on the
  // decode thread) until Open().
  GenerationSink Sink(bool keep_reading = true, bool hold = false) {
    return [self = shared_from_this(), keep_reading, hold](const GenerationEvent& e) {
      std::unique_lock<std::mutex> lock(self->mu_);
      self->events_.push_back(e);
      self->changed_.notify_all();
      if (hold && self->events_.size() == 1) {
        self->changed_.wait(lock, [&] { return self->open_; });
      }
      return keep_reading;
    };
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    changed_.notify_all();
  }
  // Waits up to 60 s for `n` events; false without.
  bool WaitEvents(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(60), [&] { return events_.size() >= n; });
  }
  // Waits up to 60 s for the done event, failing the test without.
  GenerationEvent WaitDone() {
    std::unique_lock<std::mutex> lock(mu_);
    const bool done = changed_.wait_for(lock, std::chrono::seconds(60),
                                        [&] { return !events_.empty() && events_.back().done; });
    EXPECT_TRUE(done) << "the generation never ended";
    return done ? events_.back() : GenerationEvent{};
  }
  // The text of all events so far.
  std::string Text() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string text;
    for (const GenerationEvent& e : events_) text += e.text;
    return text;
  }
  std::vector<GenerationEvent> Events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::vector<GenerationEvent> events_;
  bool open_ = false;
};

inline std::shared_ptr<Collector> NewCollector() { return std::make_shared<Collector>(); }

constexpr char kText[] =
    "In the beginning God created the heaven and the earth. And the earth was without form, and "
    "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face "
    "of the waters. And God said, Let there be light: and there was light. ";

// A generator over a trained model of local layers; the DHT node and swarm of the Inference are
// there because the router always has them, and stay idle.
class GeneratorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new gating::DmoeModel(BuildLm(LocalLmSpec("kjv"), 1));
    TrainOn(*model_, kText, 80);
    stored_ = new storage::Model(Stored(*model_, LocalLmSpec("kjv"), 1));
  }
  static void TearDownTestSuite() {
    delete stored_;
    delete model_;
  }

  void SetUp() override {
    auto dht = dht::Dht::Start(testing::LoopbackDhtOptions());
    ASSERT_TRUE(dht.ok()) << dht.status().ToString();
    dht_ = std::move(dht).value();
    inference_ = std::make_unique<Inference>(*dht_, RealClock::Instance(), pool_);
  }
  void TearDown() override {
    generator_.reset();
    inference_.reset();
    dht_->Stop();
  }

  Generator& Start(int max_active = 16, int max_pending = 64) {
    generator_ = std::make_unique<Generator>(
        GeneratorOptions{
            .clock = &RealClock::Instance(), .max_active = max_active, .max_pending = max_pending},
        *inference_);
    return *generator_;
  }

  static GenerateParams Greedy(std::string prompt, int64_t max_tokens) {
    GenerateParams p;
    p.prompt = std::move(prompt);
    p.max_tokens = max_tokens;
    p.temperature = 0;
    return p;
  }
  static GenerateParams Sampled(std::string prompt, int64_t max_tokens, uint64_t seed) {
    GenerateParams p;
    p.prompt = std::move(prompt);
    p.max_tokens = max_tokens;
    p.temperature = 1.0;
    p.top_p = 0.95;
    p.seed = seed;
    return p;
  }

  // Runs one generation alone to its end.
  GenerationEvent RunAlone(const storage::Model& model, GenerateParams params, std::string* text) {
    auto c = NewCollector();
    EXPECT_TRUE(generator_->Submit(model, std::move(params), c->Sink()).ok());
    GenerationEvent done = c->WaitDone();
    *text = c->Text();
    return done;
  }

  // Polls (with a deadline) until no generation is pending: the decode thread gives a place back
  // just after the sink's last call returns.
  bool WaitNonePending() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (generator_->pending() != 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    return generator_->pending() == 0;
  }

  static inline gating::DmoeModel* model_ = nullptr;
  static inline storage::Model* stored_ = nullptr;
  net::BufferPool pool_;
  std::unique_ptr<dht::Dht> dht_;
  std::unique_ptr<Inference> inference_;
  std::unique_ptr<Generator> generator_;
};

TEST_F(GeneratorTest, GreedyDecodingIsTheArgmaxOfFullForwards) {
  Start();
  std::string text;
  GenerationEvent done = RunAlone(*stored_, Greedy("In the beg", 20), &text);
  EXPECT_EQ(text, data::DecodeUtf8Lossy(GreedyBytes(*model_, "In the beg", 20)));
  EXPECT_EQ(done.finish_reason, FinishReason::kLength);
  EXPECT_EQ(done.prompt_tokens, 10);
  EXPECT_EQ(done.completion_tokens, 20);
  EXPECT_EQ(done.model_version, 1);
  EXPECT_TRUE(done.error.ok());

  // top_k 1 draws among one token: greedy whatever the temperature and seed.
  GenerateParams top1 = Sampled("In the beg", 20, 99);
  top1.top_k = 1;
  std::string top1_text;
  RunAlone(*stored_, top1, &top1_text);
  EXPECT_EQ(top1_text, text);
}

TEST_F(GeneratorTest, StopStringsCutTheTextExactlyAndHoldNothingBack) {
  Start();
  const std::string greedy = GreedyBytes(*model_, "And God", 40);
  for (char c : greedy) ASSERT_TRUE(c >= 0x20 && c < 0x7f) << "the trained model wrote " << greedy;
  const std::string stop = greedy.substr(12, 3);
  const size_t at = greedy.find(stop);

  GenerateParams p = Greedy("And God", 40);
  p.stop = {"\x01never", stop};
  auto c = NewCollector();
  ASSERT_TRUE(generator_->Submit(*stored_, p, c->Sink()).ok());
  GenerationEvent done = c->WaitDone();
  EXPECT_EQ(c->Text(), greedy.substr(0, at));
  EXPECT_EQ(done.finish_reason, FinishReason::kStop);
  EXPECT_EQ(done.completion_tokens, static_cast<int64_t>(at + stop.size()));
  // Every event but the last carried new text.
  std::vector<GenerationEvent> events = c->Events();
  for (size_t i = 0; i + 1 < events.size(); ++i) EXPECT_FALSE(events[i].text.empty());

  // A stop that begins like the text but never completes holds its part back only until the text
  // goes another way.
  p.stop = {greedy.substr(12, 3) + "\x01"};
  std::string text;
  done = RunAlone(*stored_, p, &text);
  EXPECT_EQ(text, greedy);
  EXPECT_EQ(done.finish_reason, FinishReason::kLength);
}

TEST_F(GeneratorTest, AGenerationEndsWhenTheContextIsFull) {
  Start();
  const std::string prompt(60, 'a');  // max_len 64: room for 4 tokens
  std::string text;
  GenerationEvent done = RunAlone(*stored_, Greedy(prompt, 100), &text);
  EXPECT_EQ(done.finish_reason, FinishReason::kLength);
  EXPECT_EQ(done.completion_tokens, 4);
  EXPECT_EQ(text, data::DecodeUtf8Lossy(GreedyBytes(*model_, prompt, 4)));
}

TEST_F(GeneratorTest, ASeedGivesTheSameTextAloneAndBatchedAndStepsAreShared) {
  Generator& generator = Start();
  constexpr int64_t kTokens = 24;
  std::string alone;
  RunAlone(*stored_, Sampled("In the beginning", kTokens, 42), &alone);
  EXPECT_EQ(generator.stats().steps, kTokens);  // one token per step
  ASSERT_TRUE(WaitNonePending());

  // A one-token generation holds the decode thread in its sink while the 8 are submitted, so
  // that all of them join at the same step.
  const GeneratorStats before = generator.stats();
  auto blocker = NewCollector();
  ASSERT_TRUE(generator.Submit(*stored_, Greedy("In", 1), blocker->Sink(true, /*hold=*/true)).ok());
  ASSERT_TRUE(blocker->WaitEvents(1));
  std::vector<std::shared_ptr<Collector>> collectors;
  const char* prompts[] = {"In the beginning", "And God said", "darkness", "the waters", "light",
                           "void; and",        "And the",      "face of"};
  for (int i = 0; i < 8; ++i) {
    collectors.push_back(NewCollector());
    // The first is the one run alone; the others draw with other seeds.
    ASSERT_TRUE(generator
                    .Submit(*stored_, Sampled(prompts[i], kTokens, i == 0 ? 42 : 1000 + i),
                            collectors.back()->Sink())
                    .ok());
  }
  blocker->Open();
  for (auto& c : collectors) EXPECT_EQ(c->WaitDone().completion_tokens, kTokens);
  EXPECT_EQ(collectors[0]->Text(), alone);
  EXPECT_TRUE(WaitNonePending());
  const GeneratorStats after = generator.stats();
  EXPECT_EQ(after.tokens - before.tokens, 1 + 8 * kTokens);
  // Continuous batching: the blocker's step, then 8 generations of 24 tokens in 24 steps, not
  // 8 x 24.
  EXPECT_EQ(after.steps - before.steps, 1 + kTokens);
  EXPECT_EQ(after.decode_calls - before.decode_calls, 1 + kTokens);
  EXPECT_EQ(after.generations - before.generations, 1 + 8);
}

TEST_F(GeneratorTest, PastMaxPendingSubmitIsRefusedUnavailable) {
  Generator& generator = Start(/*max_active=*/1, /*max_pending=*/2);
  auto held = NewCollector(), second = NewCollector(), third = NewCollector();
  ASSERT_TRUE(generator.Submit(*stored_, Greedy("In", 8), held->Sink(true, /*hold=*/true)).ok());
  ASSERT_TRUE(held->WaitEvents(1));  // the decode thread now waits in the first sink
  ASSERT_TRUE(generator.Submit(*stored_, Greedy("And", 8), second->Sink()).ok());
  EXPECT_EQ(generator.pending(), 2);
  Status refused = generator.Submit(*stored_, Greedy("light", 8), third->Sink());
  EXPECT_EQ(refused.code(), Code::kUnavailable);
  EXPECT_NE(refused.message().find("2 generations are pending"), std::string::npos);
  held->Open();
  EXPECT_EQ(held->WaitDone().finish_reason, FinishReason::kLength);
  EXPECT_EQ(second->WaitDone().finish_reason, FinishReason::kLength);
  EXPECT_TRUE(third->Events().empty());
  EXPECT_TRUE(WaitNonePending());
  EXPECT_TRUE(generator.Submit(*stored_, Greedy("light", 8), third->Sink()).ok());
  EXPECT_EQ(third->WaitDone().completion_tokens, 8);
}

TEST_F(GeneratorTest, ASinkThatStopsReadingIsDroppedAndFreesItsPlace) {
  Generator& generator = Start();
  auto gone = NewCollector();
  ASSERT_TRUE(generator.Submit(*stored_, Greedy("In the", 200), gone->Sink(false)).ok());
  ASSERT_TRUE(gone->WaitEvents(1));
  EXPECT_TRUE(WaitNonePending());
  const std::vector<GenerationEvent> events = gone->Events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(events[0].done);
  EXPECT_EQ(generator.stats().generations, 1);
  EXPECT_LT(generator.stats().tokens, 10);
}

TEST_F(GeneratorTest, ANewVersionServesNewGenerationsWhileRunningOnesKeepTheirs) {
  Generator& generator = Start();
  gating::DmoeModel v2_model = BuildLm(LocalLmSpec("kjv"), 2);
  const storage::Model v2 = Stored(v2_model, LocalLmSpec("kjv"), 2);
  auto old_one = NewCollector(), new_one = NewCollector();
  ASSERT_TRUE(
      generator.Submit(*stored_, Greedy("And God", 12), old_one->Sink(true, /*hold=*/true)).ok());
  ASSERT_TRUE(old_one->WaitEvents(1));
  ASSERT_TRUE(generator.Submit(v2, Greedy("And God", 12), new_one->Sink()).ok());
  old_one->Open();
  EXPECT_EQ(old_one->WaitDone().model_version, 1);
  EXPECT_EQ(new_one->WaitDone().model_version, 2);
  EXPECT_EQ(old_one->Text(), data::DecodeUtf8Lossy(GreedyBytes(*model_, "And God", 12)));
  EXPECT_EQ(new_one->Text(), data::DecodeUtf8Lossy(GreedyBytes(v2_model, "And God", 12)));
  // Both versions decoded in the same steps, one Decode call each.
  EXPECT_GT(generator.stats().decode_calls, generator.stats().steps);
}

TEST_F(GeneratorTest, RefusesWhatItCannotGenerate) {
  Generator& generator = Start();
  struct Case {
    std::string spec;
    std::string prompt;
    const char* says;
  };
  const Case cases[] = {
      {R"({"name": "f", "input_dim": 4, "layers": [{"type": "linear", "out": 2}]})", "a",
       "model 'f' is not a token model"},
      {R"({"name": "small", "input": "tokens", "vocab": 64, "max_len": 8,
           "layers": [{"type": "embedding", "dim": 8}, {"type": "lm_head"}]})",
       "a", "has a vocabulary of 64 tokens; generation takes byte-level models (vocab 256)"},
      {LocalLmSpec("kjv"), std::string(64, 'a'), "so a prompt may hold at most 63"},
  };
  for (const Case& c : cases) {
    gating::DmoeModel model = BuildLm(c.spec, 3);
    auto never = NewCollector();
    Status s = generator.Submit(Stored(model, c.spec, 1), Greedy(c.prompt, 4), never->Sink());
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << c.says;
    EXPECT_NE(s.message().find(c.says), std::string::npos) << s.message();
    EXPECT_TRUE(never->Events().empty());
  }
  EXPECT_EQ(generator.pending(), 0);
}

TEST_F(GeneratorTest, StopEndsEveryPendingGenerationAsUnavailable) {
  Generator& generator = Start(/*max_active=*/1);
  // Untrained and long: a thousand steps, far more than Stop takes to come.
  gating::DmoeModel long_model = BuildLm(LocalLmSpec("long", 1024), 4);
  const storage::Model stored = Stored(long_model, LocalLmSpec("long", 1024), 1);
  auto running = NewCollector(), waiting = NewCollector();
  ASSERT_TRUE(generator.Submit(stored, Greedy("In", 1000), running->Sink()).ok());
  ASSERT_TRUE(running->WaitEvents(1));
  ASSERT_TRUE(generator.Submit(stored, Greedy("And", 1000), waiting->Sink()).ok());
  generator.Stop();
  for (auto* c : {running.get(), waiting.get()}) {
    GenerationEvent done = c->WaitDone();
    EXPECT_EQ(done.finish_reason, FinishReason::kError);
    EXPECT_EQ(done.error, UnavailableError("the router is stopping"));
  }
  EXPECT_LT(running->Events().back().completion_tokens, 1000);
  EXPECT_EQ(waiting->Events().size(), 1u);
  EXPECT_EQ(generator.pending(), 0);
  auto late = NewCollector();
  EXPECT_EQ(generator.Submit(stored, Greedy("In", 4), late->Sink()).code(), Code::kUnavailable);
  generator.Stop();  // idempotent
}

}  // namespace
}  // namespace dmoe::router
