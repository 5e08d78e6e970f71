// The trainer on text: a token model (a small transformer whose ffn blocks are the in-process
// swarm's experts) trains on a real text file (the first 96 KiB of the King James Version), its
// held-out bits per byte fall, the progress and eval lines carry bpb and tokens/s, a resumed run
// continues at its data position, and --max-seconds stops a run as a signal would.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <regex>
#include <sstream>
#include <string>

#include "core/clock.h"
#include "data/text_corpus.h"
#include "gating/model.h"
#include "gating/trainer.h"
#include "model/model_spec.h"
#include "tests/gating/swarm4x4.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::gating {
namespace {

// Width kDim (16), the swarm's experts as the ffn of two pre-norm blocks.
constexpr char kTextSpec[] = R"({"name": "kjv_tiny", "input": "tokens", "vocab": 256,
  "max_len": 32, "layers": [{"type": "embedding", "dim": 16}, {"type": "positions"},
    {"type": "attention", "heads": 2},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 1, "forward_timeout_ms": 20000, "backward_k_min": 1, "backward_timeout_ms": 20000},
    {"type": "attention", "heads": 2},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 1, "forward_timeout_ms": 20000, "backward_k_min": 1, "backward_timeout_ms": 20000},
    {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";

constexpr size_t kTextBytes = 96 << 10;

// A clock whose monotonic time moves one second at every read: a run's time limit is reached
// after a known number of reads, with no waiting.
class TickingClock final : public Clock {
 public:
  int64_t NowUnixMs() const override { return 1'700'000'000'000 + NowMonotonicUs() / 1000; }
  int64_t NowMonotonicUs() const override { return (ticks_++) * 1'000'000; }

 private:
  mutable std::atomic<int64_t> ticks_{0};
};

class TextTrainerTest : public Swarm4x4 {
 protected:
  void SetUp() override {
    Result<std::string> kjv = data::ReadKjv(RealClock::Instance());
    ASSERT_TRUE(kjv.ok()) << kjv.status().ToString();
    text_path_ = dir_.WriteFile("kjv96k.txt", kjv->substr(0, kTextBytes));
    spec_path_ = dir_.WriteFile("spec.json", kTextSpec);
  }

  TrainerOptions Options() const {
    TrainerOptions o;
    o.spec_path = spec_path_;
    o.data = data::DataSpec{data::DataSource::kTextFile, text_path_};
    o.seq_len = 32;
    o.batch_size = 8;
    o.lr = 3e-3;
    o.steps = 60;
    o.eval_every = 0;
    o.publish_every = 0;
    o.log_every = 20;
    o.eval_bytes = 2048;
    o.seed = 5;
    return o;
  }

  TrainerWiring Wiring(const Clock& clock = RealClock::Instance()) {
    TrainerWiring w;
    w.clock = &clock;
    w.swarm = MakeSwarm();
    return w;
  }

  testing::TempDir dir_{"dmoe-text-trainer"};
  std::string text_path_, spec_path_;
};

TEST_F(TextTrainerTest, HeldOutBitsPerByteFallAndTheLinesShowBpbAndTokensPerSecond) {
  const TrainerOptions o = Options();
  Result<TrainerInputs> in = PrepareTrainer(o, RealClock::Instance());
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_TRUE(in->text.has_value());
  EXPECT_EQ(in->text->size(), static_cast<int64_t>(kTextBytes));
  EXPECT_EQ(in->text->held_out_bytes(), static_cast<int64_t>((kTextBytes + 19) / 20));

  // The trainer seeds torch with o.seed before it builds its model: this is its starting point.
  TrainerWiring wiring = Wiring();
  at::manual_seed(o.seed);
  DmoeModel untrained(in->spec, ModelContext{wiring.swarm});
  const double before = EvaluateBitsPerByte(untrained, *in->text, o.eval_bytes);
  // An untrained byte model is about as good as a uniform guess over 256 bytes: 8 bits.
  EXPECT_GT(before, 6.0);
  EXPECT_LT(before, 12.0);

  std::ostringstream out;
  Result<TrainerResult> r = RunTrainer(o, *in, wiring, out, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps_done, 60);
  EXPECT_EQ(r->final_test_accuracy, -1);
  EXPECT_LT(r->final_bpb, before - 1.5) << out.str();
  const std::string lines = out.str();
  const std::regex progress(
      R"(step 60/60 loss [0-9.]+ bpb [0-9.]+ train_acc [0-9.]+ samples/s [0-9.]+ tokens/s [0-9.]+ experts/sample [0-9.]+ zero_output_samples [0-9]+ )");
  EXPECT_TRUE(std::regex_search(lines, progress)) << lines;
  std::smatch eval;
  ASSERT_TRUE(std::regex_search(lines, eval, std::regex(R"(eval step 60 bpb ([0-9.]+)\n)")))
      << lines;
  EXPECT_NEAR(std::stod(eval[1]), r->final_bpb, 1e-4);
}

TEST_F(TextTrainerTest, AResumedRunContinuesAtItsDataPosition) {
  TrainerOptions o = Options();
  o.steps = 6;
  o.log_every = 3;
  o.db_dir = dir_.Sub("db");
  Result<TrainerInputs> in = PrepareTrainer(o, RealClock::Instance());
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  std::ostringstream first;
  ASSERT_TRUE(RunTrainer(o, *in, Wiring(), first, nullptr).ok());
  o.steps = 9;
  std::ostringstream second;
  Result<TrainerResult> r = RunTrainer(o, *in, Wiring(), second, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps_done, 9);
  EXPECT_NE(second.str().find("resumed from step 6\nresumed optimizer_steps "), std::string::npos)
      << second.str();
  EXPECT_NE(second.str().find(" data_windows 48\n"), std::string::npos) << second.str();
  EXPECT_NE(second.str().find("step 9/9 loss "), std::string::npos) << second.str();
}

TEST_F(TextTrainerTest, MaxSecondsStopsTheRunAsASignalWould) {
  TrainerOptions o = Options();
  o.steps = 100000;
  o.log_every = 100000;
  o.in_flight = 1;
  // The loop reads the clock once when it starts and once per claimed step (no progress line is
  // due): with a second per read, a 3.5 s limit lets three steps start.
  o.max_seconds = 3.5;
  Result<TrainerInputs> in = PrepareTrainer(o, RealClock::Instance());
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  TickingClock clock;
  std::ostringstream out;
  Result<TrainerResult> r = RunTrainer(o, *in, Wiring(clock), out, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps_done, 3) << out.str();
  EXPECT_NE(out.str().find("eval step 3 bpb "), std::string::npos) << out.str();
}

// PrepareTrainer matches the spec to the data before anything joins a swarm.
TEST_F(TextTrainerTest, PrepareRefusesASpecThatDoesNotFitTheText) {
  TrainerOptions o = Options();
  o.seq_len = 33;
  Result<TrainerInputs> long_windows = PrepareTrainer(o, RealClock::Instance());
  EXPECT_EQ(long_windows.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(long_windows.status().message(), "--seq-len 33 exceeds the spec's max_len 32");

  o.seq_len = 32;
  o.spec_path =
      dir_.WriteFile("features.json", R"({"name":"m","input_dim":784,"layers":[{"type":"relu"}]})");
  Result<TrainerInputs> features = PrepareTrainer(o, RealClock::Instance());
  EXPECT_EQ(features.status().code(), Code::kInvalidArgument);
  EXPECT_NE(features.status().message().find("trains a token model, but the spec 'm' is a feature"),
            std::string::npos)
      << features.status().message();

  o.spec_path = dir_.WriteFile("vocab.json", R"({"name":"v","input":"tokens","vocab":300,
    "max_len":32,"layers":[{"type":"embedding","dim":8},{"type":"lm_head","tied":true}]})");
  Result<TrainerInputs> vocab = PrepareTrainer(o, RealClock::Instance());
  EXPECT_EQ(vocab.status().message(), "the spec's vocab is 300; the byte tokenizer has 256 tokens");

  o.data = data::DataSpec{data::DataSource::kTextFile, dir_.Sub("missing.txt")};
  EXPECT_EQ(PrepareTrainer(o, RealClock::Instance()).status().code(), Code::kNotFound);

  // And the other way round: a token model does not train on images.
  o.data = data::DataSpec{};
  o.spec_path = spec_path_;
  Result<TrainerInputs> images = PrepareTrainer(o, RealClock::Instance());
  EXPECT_EQ(images.status().message(),
            "the spec 'kjv_tiny' is a token model: train it on text (--data kjv or text:FILE)");
}

}  // namespace
}  // namespace dmoe::gating
