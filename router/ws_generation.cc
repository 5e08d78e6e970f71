#include "router/ws_generation.h"

#include <nlohmann/json.hpp>

namespace dmoe::router {
namespace {

using Json = nlohmann::json;

Json ErrorObject(const Status& status) {
  return {{"code", CodeName(status.code())}, {"message", status.message()}};
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace

Result<WsGenerateRequest> ParseWsGenerateRequest(std::string_view message,
                                                 const GenerateLimits& limits, std::string* id) {
  if (id != nullptr) id->clear();
  // The generate fields, and with them the message's size and shape, are checked as the generate
  // route checks its body; the id is read even when they are refused, to name the refusal.
  Result<GenerateParams> params = ParseGenerateRequest(message, limits);
  const Json json = params.status().code() == Code::kPayloadTooLarge
                        ? Json()
                        : Json::parse(message, nullptr, false);
  WsGenerateRequest r;
  auto it = json.is_object() ? json.find("id") : json.end();
  const bool has_id = it != json.end() && it->is_string() &&
                      it->get_ref<const std::string&>().size() <= kMaxWsGenerateIdBytes;
  if (has_id) r.id = it->get<std::string>();
  if (has_id && id != nullptr) *id = r.id;
  if (!params.ok()) return params.status();
  if (!has_id) {
    return InvalidArgumentError("id must be a string of at most " +
                                std::to_string(kMaxWsGenerateIdBytes) + " bytes");
  }
  r.params = std::move(params).value();
  it = json.find("model");
  if (it == json.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    return InvalidArgumentError("model must be the name of a published model");
  }
  r.model = it->get<std::string>();
  return r;
}

std::vector<std::string> WsEventMessages(std::string_view id, const GenerationEvent& event) {
  std::vector<std::string> messages;
  if (!event.text.empty()) messages.push_back(Dump({{"id", id}, {"text", event.text}}));
  if (!event.done) return messages;
  Json last = {
      {"id", id},
      {"text", ""},
      {"finish_reason", FinishReasonName(event.finish_reason)},
      {"usage",
       {{"prompt_tokens", event.prompt_tokens}, {"completion_tokens", event.completion_tokens}}},
      {"model_version", event.model_version}};
  if (event.finish_reason == FinishReason::kError) {
    last["error"] =
        ErrorObject(event.error.ok() ? InternalError("the generation failed") : event.error);
  }
  messages.push_back(Dump(last));
  return messages;
}

std::string WsErrorMessage(std::string_view id, const Status& status) {
  return Dump({{"id", id}, {"error", ErrorObject(status)}});
}

}  // namespace dmoe::router
