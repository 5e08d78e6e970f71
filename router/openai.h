// The OpenAI-compatible API of the router (docs/protocol.md, "OpenAI-compatible API"): the
// translation between OpenAI's JSON and SSE shapes and dmoe's generation (router/generation.h).
// The routes under /openai/v1 live in router.cc; this file only turns bytes into a checked
// request and generation events into bytes, so it is torch-free, net-free and fuzzed
// (tests/fuzz/openai_request_fuzz.cc).
//
//   std::string param;
//   Result<openai::Request> r = openai::ParseRequest(openai::Api::kChatCompletions, body,
//                                                   GenerateLimits{}, &param);
//   if (!r.ok()) answer(HttpStatus(r.status().code()), openai::ErrorJson(r.status(), param));
//   openai::Answer answer(r->api, r->model, "chatcmpl-1", now_s, r->include_usage);
//   // streamed: answer.StreamStart(), then answer.StreamEvents(event) for every event, each
//   // payload sent as one SSE event ("data: PAYLOAD\n\n"); not streamed: answer.Body(text, last).
//
// Chat messages become one prompt through a plain template: each message as "ROLE: CONTENT\n",
// then "assistant: " (with the space); "\nuser:" is added to the stop strings so the model's
// answer ends where it would start the user's next turn. Every function is pure and thread-safe.
#ifndef DMOE_ROUTER_OPENAI_H_
#define DMOE_ROUTER_OPENAI_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "router/generation.h"

namespace dmoe::router::openai {

// A request body past this is refused with kPayloadTooLarge (413) before it is parsed: the limit
// of dmoe's own generate route.
inline constexpr size_t kMaxBodyBytes = kMaxGenerateRequestBytes;
// The most messages a chat request may have.
inline constexpr size_t kMaxMessages = 64;
// The template's stop string, added to a chat request's own.
inline constexpr char kChatStop[] = "\nuser:";

enum class Api {
  kCompletions,      // POST /openai/v1/completions
  kChatCompletions,  // POST /openai/v1/chat/completions
};

// A request translated to a generation.
struct Request {
  Api api = Api::kCompletions;
  std::string model;  // the published model's name, as the client wrote it (checked by the store)
  // The prompt (for chat: the rendered messages), the sampling knobs and the stop strings (for
  // chat: the client's, then kChatStop); checked with CheckGenerateParams.
  GenerateParams params;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage only
};

// Parses and checks the body of a completions or chat completions request (OpenAI's field names)
// against `limits`. Fields: model (required), prompt (completions: a string or a list of one
// string) or messages (chat: 1..kMaxMessages of {role system|developer|user|assistant, content: a
// string or a list of {"type": "text", "text"} parts}), max_tokens (default 16 for completions, and
// for chat limits.max_tokens, so a chat answer runs until a stop or the model's context is full;
// chat also takes max_completion_tokens), temperature, top_p, top_k (dmoe's), seed (any JSON
// integer in int64 or uint64 range; a negative one is taken modulo 2^64), stop (a string or a list
// of strings; chat leaves one of limits.max_stops to the template), stream, stream_options
// {include_usage}, and n (only 1). A null field is an absent one; unknown fields are ignored, but
// what this router cannot do is refused rather than ignored: n > 1, echo, logprobs, best_of > 1,
// suffix, tools. Errors: kPayloadTooLarge past kMaxBodyBytes; kInvalidArgument naming what is
// wrong otherwise, and then `*error_param` (when given) is the OpenAI field name the error is about
// ("" when it is about the body as a whole).
Result<Request> ParseRequest(Api api, std::string_view body, const GenerateLimits& limits,
                             std::string* error_param = nullptr);

// The chat template: each message as "ROLE: CONTENT\n", then "assistant: ".
struct ChatMessage {
  std::string role;
  std::string content;
};
std::string RenderChat(const std::vector<ChatMessage>& messages);

// OpenAI's error object {"error": {"message", "type", "param", "code"}} for a non-OK status: type
// "invalid_request_error" for the 4xx codes (except "authentication_error", "permission_error" and
// "rate_limit_error" for 401, 403 and 429), "server_error" for the 5xx ones; param null when empty;
// code `code` when given, else dmoe's code name ("invalid_argument", "unavailable", ...). The HTTP
// status to send with it is HttpStatus(status.code()).
std::string ErrorJson(const Status& status, std::string_view param = {},
                      std::string_view code = {});

// A published model as OpenAI's model object lists it.
struct ModelEntry {
  std::string name;
  int64_t version = 0;  // unix ms (PROTOCOL section 5): "created" is its seconds
};
// GET /openai/v1/models: {"object": "list", "data": [{"id", "object": "model", "created",
// "owned_by": "dmoe"}]} in the order given.
std::string ModelListJson(const std::vector<ModelEntry>& models);

// One answer in the making: its fixed parts (id, created, model) and the shape of its API.
class Answer {
 public:
  Answer(Api api, std::string model, std::string id, int64_t created_unix_s, bool include_usage);

  // Not streamed: the whole response body, given all generated text and the last event (done).
  // A last event with finish_reason kError is not an answer: send ErrorJson(last.error) instead.
  std::string Body(std::string_view text, const GenerationEvent& last) const;

  // Streamed: the SSE data payloads to send first (chat: a chunk whose delta is the role;
  // completions: none).
  std::vector<std::string> StreamStart() const;
  // Streamed: the payloads for one event. New text is one chunk (finish_reason null); the last
  // event adds a chunk with an empty text (or delta) and its finish_reason, then, when
  // include_usage, a chunk with no choices and the usage, then "[DONE]". A last event with
  // finish_reason kError has no such chunk: OpenAI has no "error" finish reason, so its payloads
  // are ErrorJson(event.error) (a chunk with an "error" object, which OpenAI's clients raise) and
  // "[DONE]".
  std::vector<std::string> StreamEvents(const GenerationEvent& event) const;

  const std::string& id() const { return id_; }
  Api api() const { return api_; }
  const std::string& model() const { return model_; }
  int64_t created() const { return created_; }

 private:
  Api api_;
  std::string model_;
  std::string id_;
  int64_t created_;
  bool include_usage_;
};

}  // namespace dmoe::router::openai

#endif  // DMOE_ROUTER_OPENAI_H_
