// Generation over the router's WebSocket (GET /v1/ws; docs/protocol.md): the messages a client
// sends and the router answers, as bytes. The route itself lives in router.cc; this file is
// torch-free, net-free and fuzzed (tests/fuzz/openai_request_fuzz.cc).
//
// A client sends JSON objects {"id": STRING, "model": NAME, ...the fields of a generate request
// (router/generation.h, ParseGenerateRequest)}, any number on one connection. The router answers
// each with {"id", "text": PIECE} per piece of text as it is decoded, then one last
// {"id", "text": "", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"},
// "model_version"} (plus "error": {"code", "message"} when finish_reason is "error"), or with one
// {"id", "error": {"code", "message"}} when the request is refused. Answers of several requests
// interleave; the id says which request each is for. Every function is pure and thread-safe.
#ifndef DMOE_ROUTER_WS_GENERATION_H_
#define DMOE_ROUTER_WS_GENERATION_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "router/generation.h"

namespace dmoe::router {

// The longest id a client may choose.
inline constexpr size_t kMaxWsGenerateIdBytes = 64;
// Generations one connection may have in flight; past it a request is refused with
// resource_exhausted.
inline constexpr int kMaxWsGenerationsInFlight = 8;

struct WsGenerateRequest {
  std::string id;     // 0..kMaxWsGenerateIdBytes bytes, chosen by the client
  std::string model;  // the published model's name
  GenerateParams params;
};

// Parses one message. Errors: those of ParseGenerateRequest, which refuses a message past
// kMaxGenerateRequestBytes (kPayloadTooLarge, unparsed) or one that is not a JSON object
// (kInvalidArgument); then kInvalidArgument for an id that is not a string of at most
// kMaxWsGenerateIdBytes, or a missing or empty model. When the message carries a usable id,
// `*id` (when given) is set to it even on error, so that the refusal names the request; otherwise
// it is left empty.
Result<WsGenerateRequest> ParseWsGenerateRequest(std::string_view message,
                                                 const GenerateLimits& limits,
                                                 std::string* id = nullptr);

// The answer messages for one generation event: {"id", "text"} when it brings new text, and for
// the last event then {"id", "text": "", "finish_reason", "usage", "model_version"} (+ "error" for
// kError).
std::vector<std::string> WsEventMessages(std::string_view id, const GenerationEvent& event);
// The refusal of request `id`: {"id", "error": {"code", "message"}}.
std::string WsErrorMessage(std::string_view id, const Status& status);

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_WS_GENERATION_H_
