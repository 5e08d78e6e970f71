#include "router/openai.h"

#include <nlohmann/json.hpp>
#include <utility>

namespace dmoe::router::openai {
namespace {

using Json = nlohmann::json;

// A refusal of the request field `param` (as OpenAI names it).
struct FieldError {
  std::string param;
  Status status;
};

// Reads the optional fields of one request object; each getter records the first error.
class Fields {
 public:
  explicit Fields(const Json& body) : body_(body) {}

  // The field, or null when absent or JSON null (clients send null for "not set").
  const Json* Get(const char* name) const {
    auto it = body_.find(name);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }

  void Fail(std::string param, std::string message) {
    if (error_.status.ok()) error_ = {std::move(param), InvalidArgumentError(std::move(message))};
  }
  bool failed() const { return !error_.status.ok(); }
  const FieldError& error() const { return error_; }

  void Integer(const char* name, int64_t* out) {
    const Json* v = Get(name);
    if (v == nullptr) return;
    if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX)) {
      return Fail(name, std::string(name) + " must be an integer");
    }
    *out = v->get<int64_t>();
  }
  void Number(const char* name, double* out) {
    const Json* v = Get(name);
    if (v == nullptr) return;
    if (!v->is_number()) return Fail(name, std::string(name) + " must be a number");
    *out = v->get<double>();
  }
  void Bool(const char* name, bool* out) {
    const Json* v = Get(name);
    if (v == nullptr) return;
    if (!v->is_boolean()) return Fail(name, std::string(name) + " must be true or false");
    *out = v->get<bool>();
  }

 private:
  const Json& body_;
  FieldError error_{"", Status::Ok()};
};

void ReadSeed(Fields& f, GenerateParams& p) {
  const Json* v = f.Get("seed");
  if (v == nullptr) return;
  if (v->is_number_unsigned()) {
    p.seed = v->get<uint64_t>();
  } else if (v->is_number_integer()) {
    p.seed = static_cast<uint64_t>(v->get<int64_t>());
  } else {
    f.Fail("seed", "seed must be an integer");
  }
}

void ReadStop(Fields& f, GenerateParams& p, size_t max_stops) {
  const Json* v = f.Get("stop");
  if (v == nullptr) return;
  if (v->is_string()) {
    p.stop.push_back(v->get<std::string>());
    return;
  }
  if (!v->is_array()) return f.Fail("stop", "stop must be a string or a list of strings");
  if (v->size() > max_stops) {
    return f.Fail("stop", "stop has " + std::to_string(v->size()) + " strings; at most " +
                              std::to_string(max_stops) + " are allowed here");
  }
  for (const Json& s : *v) {
    if (!s.is_string()) return f.Fail("stop", "stop must be a string or a list of strings");
    p.stop.push_back(s.get<std::string>());
  }
}

// What the router cannot do is refused rather than silently ignored.
void RefuseUnsupported(Fields& f, Api api) {
  int64_t n = 1;
  f.Integer("n", &n);
  if (!f.failed() && n != 1)
    f.Fail("n", "n must be 1: this router generates one choice per request");
  if (const Json* v = f.Get("logprobs");
      v != nullptr && !(v->is_boolean() && !v->get<bool>()) && !(v->is_number() && *v == 0)) {
    f.Fail("logprobs", "logprobs are not available from this router");
  }
  if (const Json* v = f.Get("tools"); v != nullptr && !(v->is_array() && v->empty())) {
    f.Fail("tools", "tools are not available from this router");
  }
  if (api != Api::kCompletions) return;
  if (const Json* v = f.Get("echo"); v != nullptr && !(v->is_boolean() && !v->get<bool>())) {
    f.Fail("echo", "echo is not available from this router");
  }
  if (const Json* v = f.Get("best_of"); v != nullptr && *v != 1) {
    f.Fail("best_of", "best_of must be 1: this router generates one choice per request");
  }
  if (const Json* v = f.Get("suffix"); v != nullptr && !(v->is_string() && v->empty())) {
    f.Fail("suffix", "suffix is not available from this router");
  }
}

void ReadPrompt(Fields& f, GenerateParams& p) {
  const Json* v = f.Get("prompt");
  if (v != nullptr && v->is_array() && v->size() == 1) v = &(*v)[0];
  if (v == nullptr || !v->is_string()) {
    return f.Fail("prompt", "prompt must be a string (or a list of one string)");
  }
  p.prompt = v->get<std::string>();
}

void ReadMessages(Fields& f, GenerateParams& p) {
  const Json* v = f.Get("messages");
  if (v == nullptr || !v->is_array() || v->empty()) {
    return f.Fail("messages", "messages must be a list of 1 to " + std::to_string(kMaxMessages) +
                                  " {role, content} objects");
  }
  if (v->size() > kMaxMessages) {
    return f.Fail("messages", "messages has " + std::to_string(v->size()) + " entries; at most " +
                                  std::to_string(kMaxMessages) + " are allowed");
  }
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < v->size(); ++i) {
    const Json& m = (*v)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return f.Fail("messages", at + " must be a {role, content} object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() ||
        (*role != "system" && *role != "developer" && *role != "user" && *role != "assistant")) {
      return f.Fail("messages",
                    at + ".role must be \"system\", \"developer\", \"user\" or \"assistant\"");
    }
    auto content = m.find("content");
    std::string text;
    if (content != m.end() && content->is_string()) {
      text = content->get<std::string>();
    } else if (content != m.end() && content->is_array()) {
      for (const Json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto part_text = part.is_object() ? part.find("text") : part.end();
        if (!part.is_object() || type == part.end() || *type != "text" || part_text == part.end() ||
            !part_text->is_string()) {
          return f.Fail("messages", at + ".content parts must be {\"type\": \"text\", \"text\"}: "
                                         "this router takes text only");
        }
        text += part_text->get<std::string>();
      }
    } else {
      return f.Fail("messages", at + ".content must be a string or a list of text parts");
    }
    messages.push_back({role->get<std::string>(), std::move(text)});
  }
  p.prompt = RenderChat(messages);
}

const char* ErrorType(Code code) {
  switch (code) {
    case Code::kUnauthenticated:
      return "authentication_error";
    case Code::kPermissionDenied:
      return "permission_error";
    case Code::kResourceExhausted:
      return "rate_limit_error";
    default:
      return HttpStatus(code) >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json Usage(const GenerationEvent& e) {
  return {{"prompt_tokens", e.prompt_tokens},
          {"completion_tokens", e.completion_tokens},
          {"total_tokens", e.prompt_tokens + e.completion_tokens}};
}

}  // namespace

Result<Request> ParseRequest(Api api, std::string_view body, const GenerateLimits& limits,
                             std::string* error_param) {
  if (error_param != nullptr) error_param->clear();
  if (body.size() > kMaxBodyBytes) {
    return PayloadTooLargeError("the request body has " + std::to_string(body.size()) +
                                " bytes; at most " + std::to_string(kMaxBodyBytes) +
                                " are allowed");
  }
  const Json json = Json::parse(body, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return InvalidArgumentError("the body must be a JSON object");
  }
  Fields f(json);
  Request r;
  r.api = api;
  GenerateParams& p = r.params;
  p.max_tokens = api == Api::kCompletions ? 16 : limits.max_tokens;
  // Chat leaves one stop string to the template.
  const size_t max_stops =
      api == Api::kCompletions || limits.max_stops == 0 ? limits.max_stops : limits.max_stops - 1;
  if (const Json* model = f.Get("model");
      model == nullptr || !model->is_string() || model->get<std::string>().empty()) {
    f.Fail("model", "model must be the name of a published model");
  } else {
    r.model = model->get<std::string>();
  }
  if (!f.failed()) RefuseUnsupported(f, api);
  if (!f.failed()) api == Api::kCompletions ? ReadPrompt(f, p) : ReadMessages(f, p);
  f.Integer("max_tokens", &p.max_tokens);
  if (api == Api::kChatCompletions) f.Integer("max_completion_tokens", &p.max_tokens);
  f.Number("temperature", &p.temperature);
  f.Number("top_p", &p.top_p);
  f.Integer("top_k", &p.top_k);
  ReadSeed(f, p);
  ReadStop(f, p, max_stops);
  f.Bool("stream", &p.stream);
  if (const Json* options = f.Get("stream_options"); options != nullptr) {
    if (!options->is_object()) {
      f.Fail("stream_options", "stream_options must be an object");
    } else {
      auto usage = options->find("include_usage");
      if (usage != options->end() && usage->is_boolean()) {
        r.include_usage = usage->get<bool>();
      } else if (usage != options->end() && !usage->is_null()) {
        f.Fail("stream_options", "stream_options.include_usage must be true or false");
      }
    }
  }
  if (f.failed()) {
    if (error_param != nullptr) *error_param = f.error().param;
    return f.error().status;
  }
  if (api == Api::kChatCompletions) p.stop.push_back(kChatStop);
  DMOE_RETURN_IF_ERROR(CheckGenerateParams(p, limits));
  return r;
}

std::string RenderChat(const std::vector<ChatMessage>& messages) {
  std::string prompt;
  for (const ChatMessage& m : messages) prompt += m.role + ": " + m.content + "\n";
  return prompt + "assistant: ";
}

std::string ErrorJson(const Status& status, std::string_view param, std::string_view code) {
  Json error = {{"message", status.message()},
                {"type", ErrorType(status.code())},
                {"param", param.empty() ? Json(nullptr) : Json(param)},
                {"code", code.empty() ? CodeName(status.code()) : code}};
  return Dump({{"error", std::move(error)}});
}

std::string ModelListJson(const std::vector<ModelEntry>& models) {
  Json data = Json::array();
  for (const ModelEntry& m : models) {
    data.push_back(
        {{"id", m.name}, {"object", "model"}, {"created", m.version / 1000}, {"owned_by", "dmoe"}});
  }
  return Dump({{"object", "list"}, {"data", std::move(data)}});
}

Answer::Answer(Api api, std::string model, std::string id, int64_t created_unix_s,
               bool include_usage)
    : api_(api),
      model_(std::move(model)),
      id_(std::move(id)),
      created_(created_unix_s),
      include_usage_(include_usage) {}

namespace {

// The parts every response and chunk of `answer` has, with object `object`.
Json Frame(const Answer& answer, const char* object) {
  return {{"id", answer.id()},
          {"object", object},
          {"created", answer.created()},
          {"model", answer.model()}};
}

// One choice of a chunk: `text` as the completion's text or the chat delta's content (and role,
// when given), with `finish` or null.
Json ChunkChoice(Api api, std::string_view text, const char* role, const Json& finish) {
  Json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
  if (api == Api::kCompletions) {
    choice["text"] = text;
  } else {
    Json delta = {{"content", text}};
    if (role != nullptr) delta["role"] = role;
    choice["delta"] = std::move(delta);
  }
  return choice;
}

Json ChunkOf(const Answer& answer, Json choices) {
  Json chunk = Frame(
      answer, answer.api() == Api::kCompletions ? "text_completion" : "chat.completion.chunk");
  chunk["choices"] = std::move(choices);
  return chunk;
}

}  // namespace

std::string Answer::Body(std::string_view text, const GenerationEvent& last) const {
  Json choice = {
      {"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReasonName(last.finish_reason)}};
  if (api_ == Api::kCompletions) {
    choice["text"] = text;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  }
  Json body = Frame(*this, api_ == Api::kCompletions ? "text_completion" : "chat.completion");
  body["choices"] = Json::array({std::move(choice)});
  body["usage"] = Usage(last);
  return Dump(body);
}

std::vector<std::string> Answer::StreamStart() const {
  if (api_ == Api::kCompletions) return {};
  return {Dump(ChunkOf(*this, Json::array({ChunkChoice(api_, "", "assistant", nullptr)})))};
}

std::vector<std::string> Answer::StreamEvents(const GenerationEvent& event) const {
  std::vector<std::string> payloads;
  if (!event.text.empty()) {
    payloads.push_back(
        Dump(ChunkOf(*this, Json::array({ChunkChoice(api_, event.text, nullptr, nullptr)}))));
  }
  if (!event.done) return payloads;
  if (event.finish_reason == FinishReason::kError) {
    payloads.push_back(
        ErrorJson(event.error.ok() ? InternalError("the generation failed") : event.error));
  } else {
    payloads.push_back(Dump(ChunkOf(
        *this,
        Json::array({ChunkChoice(api_, "", nullptr, FinishReasonName(event.finish_reason))}))));
    if (include_usage_) {
      Json chunk = ChunkOf(*this, Json::array());
      chunk["usage"] = Usage(event);
      payloads.push_back(Dump(chunk));
    }
  }
  payloads.push_back("[DONE]");
  return payloads;
}

}  // namespace dmoe::router::openai
