// The OpenAI-compatible routes and the router's WebSocket take JSON from anyone: their parsers must
// refuse garbage with a Status (400 or 413, never anything else), and whatever they accept must be
// within the generate limits and answerable: every answer they lead to is valid JSON.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "router/openai.h"
#include "router/ws_generation.h"

namespace {

using dmoe::Code;
using dmoe::router::FinishReason;
using dmoe::router::GenerateLimits;
using dmoe::router::GenerationEvent;

void CheckRefusal(const dmoe::Status& status) {
  if (status.code() != Code::kInvalidArgument && status.code() != Code::kPayloadTooLarge) {
    std::abort();
  }
}

void CheckJson(const std::string& text) {
  if (!nlohmann::json::accept(text)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace openai = dmoe::router::openai;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const GenerateLimits limits;
  for (openai::Api api : {openai::Api::kCompletions, openai::Api::kChatCompletions}) {
    std::string param;
    dmoe::Result<openai::Request> r = openai::ParseRequest(api, body, limits, &param);
    if (!r.ok()) {
      CheckRefusal(r.status());
      CheckJson(openai::ErrorJson(r.status(), param));
      continue;
    }
    if (!dmoe::router::CheckGenerateParams(r->params, limits).ok() || r->model.empty()) {
      std::abort();
    }
    if (api == openai::Api::kChatCompletions &&
        (r->params.stop.empty() || r->params.stop.back() != openai::kChatStop)) {
      std::abort();
    }
    // The accepted prompt comes back as text of the answers.
    openai::Answer answer(api, r->model, "id", 1, r->include_usage);
    GenerationEvent last;
    last.text = r->params.prompt;
    last.done = true;
    CheckJson(answer.Body(r->params.prompt, last));
    for (const std::string& p : answer.StreamEvents(last)) {
      if (p != "[DONE]") CheckJson(p);
    }
  }
  std::string id;
  dmoe::Result<dmoe::router::WsGenerateRequest> ws =
      dmoe::router::ParseWsGenerateRequest(body, limits, &id);
  if (!ws.ok()) {
    CheckRefusal(ws.status());
    if (id.size() > dmoe::router::kMaxWsGenerateIdBytes) std::abort();
    CheckJson(dmoe::router::WsErrorMessage(id, ws.status()));
    return 0;
  }
  if (ws->id != id || ws->model.empty() ||
      !dmoe::router::CheckGenerateParams(ws->params, limits).ok()) {
    std::abort();
  }
  GenerationEvent last;
  last.text = ws->params.prompt;
  last.done = true;
  last.finish_reason = FinishReason::kError;
  last.error = dmoe::UnavailableError("fuzz");
  for (const std::string& m : dmoe::router::WsEventMessages(ws->id, last)) CheckJson(m);
  return 0;
}
