#include "router/generation.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/utils.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "data/byte_tokenizer.h"
#include "router/generated_text.h"
#include "router/inference.h"
#include "router/sampler.h"

namespace dmoe::router {
namespace {

// One generation, owned by the queue and then by the decode thread.
struct Sequence {
  Sequence(std::shared_ptr<LoadedModel> m, const GenerateParams& p, uint64_t seed, GenerationSink s)
      : model(std::move(m)),
        sink(std::move(s)),
        max_tokens(p.max_tokens),
        max_len(model->model->spec().max_len),
        sampler(p.temperature, p.top_k, p.top_p, seed),
        text(p.stop),
        next(data::EncodeBytes(p.prompt)),
        prompt_tokens(static_cast<int64_t>(next.size())) {}

  std::shared_ptr<LoadedModel> model;  // the version it started on, kept alive until it ends
  GenerationSink sink;
  int64_t max_tokens;
  int64_t max_len;
  TokenSampler sampler;
  GeneratedText text;
  gating::SequenceCache cache;
  std::vector<data::Token> next;  // what the next Decode takes: the prompt, then the last token
  int64_t prompt_tokens;
  int64_t completion_tokens = 0;
  bool ended = false;  // done was sent, or the sink returned false
};

// The byte-level vocabulary: a sampled token is the byte it stands for.
constexpr int64_t kVocab = data::kByteVocabSize;

}  // namespace

struct Generator::State {
  State(GeneratorOptions o, Inference& i) : options(o), inference(i) {}

  void Run();
  // One step: every active sequence decodes once, grouped by model version.
  void Step();
  void DecodeGroup(LoadedModel& model, const std::vector<Sequence*>& group);
  // Takes the token sampled for `seq`: emits its text, and ends it at a stop string, max_tokens or
  // a full context.
  void Advance(Sequence& seq, data::Token token);
  // Hands `event` to the sink (filling in the counts); a sink that returns false, or throws, ends
  // the sequence.
  void Emit(Sequence& seq, GenerationEvent event);
  void End(Sequence& seq, FinishReason reason, Status error, std::string text);

  const GeneratorOptions options;
  Inference& inference;

  mutable std::mutex mu;
  std::condition_variable wake;
  std::deque<std::unique_ptr<Sequence>> waiting;  // guarded by mu
  bool stopping = false;                          // guarded by mu
  std::mutex stop_mu;                             // serializes Stop
  std::atomic<int> pending{0};
  std::atomic<int64_t> steps{0}, decode_calls{0}, tokens{0}, generations{0}, decode_us{0};
  std::mt19937_64 seeds{std::random_device{}()};  // guarded by mu: seeds of requests without one

  // The decode thread's own.
  std::vector<std::unique_ptr<Sequence>> active;
  std::thread thread;
};

Generator::Generator(GeneratorOptions options, Inference& inference)
    : state_(std::make_unique<State>(options, inference)) {
  state_->thread = std::thread([state = state_.get()] { state->Run(); });
}

Generator::~Generator() { Stop(); }

Status Generator::Submit(const storage::Model& model, GenerateParams params, GenerationSink sink) {
  State& s = *state_;
  if (s.pending.fetch_add(1) >= s.options.max_pending) {
    s.pending.fetch_sub(1);
    return UnavailableError(std::to_string(s.options.max_pending) +
                            " generations are pending, as many as this router takes; retry later "
                            "or at another router");
  }
  // Gives the place back unless the generation is queued.
  bool queued = false;
  struct Release {
    State& s;
    const bool& queued;
    ~Release() {
      if (!queued) s.pending.fetch_sub(1);
    }
  } release{s, queued};
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.stopping) return UnavailableError("the router is stopping");
  }
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<LoadedModel> loaded, s.inference.Load(model));
  const model::ModelSpec& spec = loaded->model->spec();
  if (spec.input != model::InputKind::kTokens) {
    return InvalidArgumentError("model '" + spec.name +
                                "' is not a token model: it takes features through POST "
                                "/v1/models/" +
                                spec.name + "/infer");
  }
  if (spec.vocab != kVocab) {
    return InvalidArgumentError("model '" + spec.name + "' has a vocabulary of " +
                                std::to_string(spec.vocab) +
                                " tokens; generation takes byte-level models (vocab 256)");
  }
  const int64_t prompt_tokens = static_cast<int64_t>(params.prompt.size());
  if (prompt_tokens + 1 > spec.max_len) {
    return InvalidArgumentError(
        "the prompt is " + std::to_string(prompt_tokens) + " tokens (bytes) long; model '" +
        spec.name + "' holds at most " + std::to_string(spec.max_len) +
        " tokens, prompt and output together, so a prompt may hold at most " +
        std::to_string(spec.max_len - 1));
  }
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.stopping) return UnavailableError("the router is stopping");
  const uint64_t seed = params.seed ? *params.seed : s.seeds();
  s.waiting.push_back(std::make_unique<Sequence>(std::move(loaded), params, seed, std::move(sink)));
  queued = true;
  s.wake.notify_one();
  return Status::Ok();
}

int Generator::pending() const { return state_->pending.load(); }

GeneratorStats Generator::stats() const {
  const State& s = *state_;
  return {s.steps.load(), s.decode_calls.load(), s.tokens.load(), s.generations.load(),
          s.decode_us.load()};
}

void Generator::Stop() {
  State& s = *state_;
  std::lock_guard<std::mutex> stop_lock(s.stop_mu);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stopping = true;
  }
  s.wake.notify_all();
  if (s.thread.joinable()) s.thread.join();
}

void Generator::State::Run() {
  // Generation never trains: no autograd graph is kept for any tensor made on this thread.
  torch::NoGradGuard no_grad;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu);
      wake.wait(lock, [&] { return stopping || !waiting.empty() || !active.empty(); });
      if (stopping) break;
      // Newcomers join between steps, in the order they came.
      while (static_cast<int>(active.size()) < std::max(1, options.max_active) &&
             !waiting.empty()) {
        active.push_back(std::move(waiting.front()));
        waiting.pop_front();
      }
    }
    Step();
  }
  std::deque<std::unique_ptr<Sequence>> left;
  {
    std::lock_guard<std::mutex> lock(mu);
    left.swap(waiting);
  }
  for (auto& seq : left) active.push_back(std::move(seq));
  for (auto& seq : active) {
    End(*seq, FinishReason::kError, UnavailableError("the router is stopping"), seq->text.Finish());
  }
  active.clear();
}

void Generator::State::Step() {
  ++steps;
  // Sequences of one model version decode together; versions in the order they first appear.
  std::vector<std::pair<LoadedModel*, std::vector<Sequence*>>> groups;
  for (auto& seq : active) {
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == seq->model.get(); });
    if (it == groups.end()) {
      groups.emplace_back(seq->model.get(), std::vector<Sequence*>{});
      it = groups.end() - 1;
    }
    it->second.push_back(seq.get());
  }
  for (auto& [model, group] : groups) {
    try {
      DecodeGroup(*model, group);
    } catch (const std::exception& e) {
      // Sampling and the sinks run outside Decode's own error handling.
      for (Sequence* seq : group) {
        if (!seq->ended) {
          End(*seq, FinishReason::kError, InternalError(std::string("generating: ") + e.what()),
              seq->text.Finish());
        }
      }
    }
  }
  std::erase_if(active, [](const std::unique_ptr<Sequence>& seq) { return seq->ended; });
}

void Generator::State::DecodeGroup(LoadedModel& model, const std::vector<Sequence*>& group) {
  std::vector<gating::SequenceCache*> caches;
  std::vector<at::Tensor> inputs;
  for (Sequence* seq : group) {
    caches.push_back(&seq->cache);
    inputs.push_back(at::tensor(seq->next, at::kLong));
  }
  const int64_t start_us = options.clock->NowMonotonicUs();
  Result<std::vector<at::Tensor>> logits = [&] {
    std::lock_guard<std::mutex> lock(model.mu);
    return model.model->Decode(caches, inputs);
  }();
  decode_us += options.clock->NowMonotonicUs() - start_us;
  ++decode_calls;
  if (!logits.ok()) {
    // kUnavailable: a moe layer got fewer than k_min answers for some token. Anything else is the
    // router's own failure (the sequences were checked when they were submitted).
    const Status error = logits.status().code() == Code::kUnavailable
                             ? logits.status()
                             : InternalError(logits.status().message());
    spdlog::warn("generation: decoding {} sequences failed: {}", group.size(), error.ToString());
    for (Sequence* seq : group) End(*seq, FinishReason::kError, error, seq->text.Finish());
    return;
  }
  for (size_t i = 0; i < group.size(); ++i) {
    at::Tensor last = (*logits)[i][-1].to(at::kFloat).contiguous();
    const int64_t token =
        group[i]->sampler.Next({last.data_ptr<float>(), static_cast<size_t>(last.numel())});
    Advance(*group[i], token);
  }
}

void Generator::State::Advance(Sequence& seq, data::Token token) {
  ++tokens;
  ++seq.completion_tokens;
  std::string piece = seq.text.Push(static_cast<uint8_t>(token));
  if (seq.text.stopped()) return End(seq, FinishReason::kStop, Status::Ok(), std::move(piece));
  // The sampled token enters the context at the next step, so the context is full when prompt and
  // output fill max_len.
  if (seq.completion_tokens == seq.max_tokens ||
      seq.prompt_tokens + seq.completion_tokens >= seq.max_len) {
    piece += seq.text.Finish();
    return End(seq, seq.text.stopped() ? FinishReason::kStop : FinishReason::kLength, Status::Ok(),
               std::move(piece));
  }
  seq.next.assign(1, token);
  if (!piece.empty()) {
    GenerationEvent event;
    event.text = std::move(piece);
    Emit(seq, std::move(event));
  }
}

void Generator::State::Emit(Sequence& seq, GenerationEvent event) {
  event.prompt_tokens = seq.prompt_tokens;
  event.completion_tokens = seq.completion_tokens;
  event.model_version = seq.model->version;
  bool more = false;
  try {
    more = seq.sink(event);
  } catch (const std::exception& e) {
    spdlog::error("generation: a sink threw: {}", e.what());
  }
  if (!more || event.done) {
    seq.ended = true;
    ++generations;
    pending.fetch_sub(1);
  }
}

void Generator::State::End(Sequence& seq, FinishReason reason, Status error, std::string text) {
  GenerationEvent event;
  event.text = std::move(text);
  event.done = true;
  event.finish_reason = reason;
  event.error = std::move(error);
  Emit(seq, std::move(event));
}

}  // namespace dmoe::router
