// Generation: text from a token model (a decoder-only transformer, model/model_spec.h) for the
// router's generate routes (POST /v1/models/{name}/generate, its SSE and WebSocket forms, and the
// OpenAI-compatible completions under /openai/v1).
//
//   GeneratorOptions options{.clock = &clock};
//   Generator generator(options, inference);          // starts the decode thread
//   DMOE_ASSIGN_OR_RETURN(GenerateParams p, ParseGenerateRequest(body, GenerateLimits{}));
//   DMOE_RETURN_IF_ERROR(generator.Submit(model, p, [](const GenerationEvent& e) {
//     send(e.text); if (e.done) finish(e.finish_reason); return client_still_there;
//   }));
//
// Decoding runs the prompt once and then one token per step per sequence through
// gating::DmoeModel::Decode (attention keys and values cached; each moe layer sends only the new
// token of each sequence). Sequences are batched per step: a submitted request joins at the next
// step and leaves when it is done, so concurrent streams share each step's expert round trips
// (continuous batching). Text is byte-level (data/byte_tokenizer.h): one token per byte; events
// carry whole UTF-8 characters only.
//
// Sampling is deterministic for a fixed seed, model version and swarm: each sequence draws from its
// own generator seeded by its seed, whatever else is batched with it.
#ifndef DMOE_ROUTER_GENERATION_H_
#define DMOE_ROUTER_GENERATION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"
#include "core/status.h"
#include "storage/model_store.h"

namespace dmoe::router {

class Inference;

// The largest generate request body taken: POST .../generate answers 413 past it.
inline constexpr size_t kMaxGenerateRequestBytes = 64 << 10;

// Bounds of one generate request; a request past any is refused with kInvalidArgument (400).
struct GenerateLimits {
  size_t max_prompt_bytes = 8192;
  int64_t max_tokens = 1024;  // the largest max_tokens accepted
  size_t max_stops = 4;
  size_t max_stop_bytes = 64;
};

// A generate request (POST /v1/models/{name}/generate; PROTOCOL.md section 5).
struct GenerateParams {
  std::string prompt;             // 1..max_prompt_bytes bytes of UTF-8: one token per byte
  int64_t max_tokens = 64;        // 1..GenerateLimits::max_tokens
  double temperature = 1.0;       // 0..2; 0 = greedy (the most likely token, no draw)
  int64_t top_k = 0;              // 0 = no cut; else 1..vocab: draw among the k most likely
  double top_p = 1.0;             // (0, 1]: draw among the fewest tokens holding this much mass
  std::optional<uint64_t> seed;   // none: the router draws one
  std::vector<std::string> stop;  // generation ends before the first occurrence of any of these
  bool stream = false;            // SSE answer (the HTTP route only)
};

// Parses a JSON body {"prompt", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop",
// "stream"}: every field optional except prompt (a non-empty string); "stop" a string or a list of
// strings. Unknown fields are ignored (clients send more than they need), and a field that is null
// counts as absent (as clients of OpenAI-style APIs send unset knobs). kInvalidArgument naming
// the field for a body that is not a JSON object, a field of the wrong type, a value out of range,
// a prompt or stop past `limits`, or a prompt or stop that is not valid UTF-8 (a body that is not
// JSON, invalid UTF-8 inside a string included); kPayloadTooLarge for a body past
// kMaxGenerateRequestBytes. top_k is bounded by 256, the byte-level vocabulary every model the
// generator takes has.
Result<GenerateParams> ParseGenerateRequest(std::string_view json_body,
                                            const GenerateLimits& limits);
// The same checks for params built by another front end (the OpenAI routes).
Status CheckGenerateParams(const GenerateParams& params, const GenerateLimits& limits);

enum class FinishReason {
  kLength,  // max_tokens reached, or the model's context (max_len) is full
  kStop,    // a stop string was generated (it is not part of the text)
  kError,   // the swarm could not answer, or the router stopped: GenerationEvent::error says which
};
// "length", "stop", "error".
std::string_view FinishReasonName(FinishReason reason);

// What a generation's sink receives: zero or more events with new text, then exactly one with
// done set. The text of all events together is the generated text (never the stop string, and
// never a prefix of one that turned out to be a stop: such text is held back until it is known).
struct GenerationEvent {
  std::string text;  // new text since the previous event: whole UTF-8 characters only
  bool done = false;
  FinishReason finish_reason = FinishReason::kLength;  // when done
  // When finish_reason is kError: kUnavailable when a moe layer got fewer than k_min answers for a
  // token or the router is stopping, kInternal for a failure of the computation.
  Status error;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // tokens generated so far
  int64_t model_version = 0;
};
// Called on the generator's thread, in order, for one generation. Must not block (hand the event
// to a network write and return). Returns false when nobody reads any more (the client left): the
// sequence is dropped before the next step and its sink is not called again.
using GenerationSink = std::function<bool(const GenerationEvent&)>;

struct GeneratorOptions {
  const Clock* clock = nullptr;  // required
  // Sequences decoded together in one step; more wait in the queue until one finishes.
  int max_active = 16;
  // Generations accepted and not yet done (active and waiting); past it Submit is refused.
  int max_pending = 64;
};

// Counts since the generator started, for metrics and tests.
struct GeneratorStats {
  int64_t steps = 0;         // rounds of the decode loop (each decodes every active sequence once)
  int64_t decode_calls = 0;  // DmoeModel::Decode calls: one per model version per step
  int64_t tokens = 0;        // tokens generated
  int64_t generations = 0;   // generations ended (done sent, or dropped by their sink)
  int64_t decode_us = 0;     // time spent in Decode, on the clock of GeneratorOptions
};

class Generator {
 public:
  // Starts the decode thread. `inference` builds (and caches) the models; it must outlive this.
  Generator(GeneratorOptions options, Inference& inference);
  // Stop().
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Queues a generation of `model` (the version given) with `params` (checked by the caller with
  // CheckGenerateParams or ParseGenerateRequest). Returns once the model is built (the first
  // generation of a version builds it through `inference`, which caches it; later ones find it), so
  // call it where blocking for that long is fine, never on a network thread. `sink` then gets the
  // events on the decode thread. Errors, after which `sink` is never called: kUnavailable (503,
  // with Retry-After) when max_pending generations are pending or the generator stopped;
  // kInvalidArgument when the model is not a byte-level token model (vocab 256) or its prompt does
  // not leave room for one token within max_len; the code of the failure to build the model
  // otherwise. A generation keeps the version it started with until it ends, whatever is
  // published meanwhile.
  Status Submit(const storage::Model& model, GenerateParams params, GenerationSink sink);

  // Generations pending now (active and waiting). Any thread.
  int pending() const;
  // Any thread.
  GeneratorStats stats() const;

  // Ends every pending generation with an event {done, kError, kUnavailable "the router is
  // stopping"} and joins the decode thread. Idempotent; must not be called from a sink.
  void Stop();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_GENERATION_H_
