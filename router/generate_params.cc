// The torch-free half of router/generation.h: the generate request's parsing and checks, fuzzed by
// tests/fuzz/generate_request_fuzz.cc.
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "data/byte_tokenizer.h"
#include "router/generation.h"

namespace dmoe::router {
namespace {

bool IsUtf8(std::string_view s) { return data::DecodeUtf8Lossy(s) == s; }

// A JSON value for an error message: short, and its invalid UTF-8 replaced.
std::string Quote(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return text;
}

std::string Range(int64_t lo, int64_t hi) { return std::to_string(lo) + ".." + std::to_string(hi); }

// The field `name`, or null when absent or null.
const nlohmann::json* Field(const nlohmann::json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

Status ReadInteger(const nlohmann::json& body, const char* name, int64_t* out) {
  const nlohmann::json* v = Field(body, name);
  if (v == nullptr) return Status::Ok();
  if (!v->is_number_integer() ||
      (v->is_number_unsigned() &&
       v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    return InvalidArgumentError(std::string(name) + " must be an integer, not " + Quote(*v));
  }
  *out = v->get<int64_t>();
  return Status::Ok();
}

Status ReadNumber(const nlohmann::json& body, const char* name, double* out) {
  const nlohmann::json* v = Field(body, name);
  if (v == nullptr) return Status::Ok();
  if (!v->is_number()) {
    return InvalidArgumentError(std::string(name) + " must be a number, not " + Quote(*v));
  }
  *out = v->get<double>();
  return Status::Ok();
}

Status ReadStops(const nlohmann::json& body, std::vector<std::string>* out) {
  const nlohmann::json* v = Field(body, "stop");
  if (v == nullptr) return Status::Ok();
  if (v->is_string()) {
    out->push_back(v->get<std::string>());
    return Status::Ok();
  }
  if (!v->is_array()) {
    return InvalidArgumentError("stop must be a string or a list of strings, not " + Quote(*v));
  }
  for (const nlohmann::json& s : *v) {
    if (!s.is_string()) {
      return InvalidArgumentError("stop must be a string or a list of strings; " + Quote(s) +
                                  " is not a string");
    }
    out->push_back(s.get<std::string>());
  }
  return Status::Ok();
}

}  // namespace

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

Result<GenerateParams> ParseGenerateRequest(std::string_view json_body,
                                            const GenerateLimits& limits) {
  if (json_body.size() > kMaxGenerateRequestBytes) {
    return PayloadTooLargeError("the generate request has " + std::to_string(json_body.size()) +
                                " bytes; at most " + std::to_string(kMaxGenerateRequestBytes) +
                                " are taken");
  }
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(json_body);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) {
    return InvalidArgumentError("the body must be a JSON object {\"prompt\": ..., ...}, not " +
                                Quote(body));
  }
  GenerateParams p;
  const nlohmann::json* prompt = Field(body, "prompt");
  if (prompt == nullptr || !prompt->is_string()) {
    return InvalidArgumentError(prompt == nullptr
                                    ? "prompt is missing: send {\"prompt\": \"some text\"}"
                                    : "prompt must be a string, not " + Quote(*prompt));
  }
  p.prompt = prompt->get<std::string>();
  DMOE_RETURN_IF_ERROR(ReadInteger(body, "max_tokens", &p.max_tokens));
  DMOE_RETURN_IF_ERROR(ReadNumber(body, "temperature", &p.temperature));
  DMOE_RETURN_IF_ERROR(ReadInteger(body, "top_k", &p.top_k));
  DMOE_RETURN_IF_ERROR(ReadNumber(body, "top_p", &p.top_p));
  if (const nlohmann::json* seed = Field(body, "seed")) {
    if (!seed->is_number_unsigned()) {
      return InvalidArgumentError("seed must be an integer in 0..18446744073709551615, not " +
                                  Quote(*seed));
    }
    p.seed = seed->get<uint64_t>();
  }
  DMOE_RETURN_IF_ERROR(ReadStops(body, &p.stop));
  if (const nlohmann::json* stream = Field(body, "stream")) {
    if (!stream->is_boolean()) {
      return InvalidArgumentError("stream must be true or false, not " + Quote(*stream));
    }
    p.stream = stream->get<bool>();
  }
  DMOE_RETURN_IF_ERROR(CheckGenerateParams(p, limits));
  return p;
}

Status CheckGenerateParams(const GenerateParams& p, const GenerateLimits& limits) {
  if (p.prompt.empty() || p.prompt.size() > limits.max_prompt_bytes) {
    return InvalidArgumentError("prompt must hold 1.." + std::to_string(limits.max_prompt_bytes) +
                                " bytes, not " + std::to_string(p.prompt.size()));
  }
  if (!IsUtf8(p.prompt)) return InvalidArgumentError("prompt is not valid UTF-8");
  if (p.max_tokens < 1 || p.max_tokens > limits.max_tokens) {
    return InvalidArgumentError("max_tokens must be in " + Range(1, limits.max_tokens) + ", not " +
                                std::to_string(p.max_tokens));
  }
  if (!(p.temperature >= 0 && p.temperature <= 2)) {
    return InvalidArgumentError(
        "temperature must be in 0..2 (0: always the most likely token), not " +
        std::to_string(p.temperature));
  }
  if (p.top_k < 0 || p.top_k > data::kByteVocabSize) {
    return InvalidArgumentError("top_k must be in " + Range(0, data::kByteVocabSize) +
                                " (0: no cut), not " + std::to_string(p.top_k));
  }
  if (!(p.top_p > 0 && p.top_p <= 1)) {
    return InvalidArgumentError("top_p must be in (0, 1], not " + std::to_string(p.top_p));
  }
  if (p.stop.size() > limits.max_stops) {
    return InvalidArgumentError("stop holds " + std::to_string(p.stop.size()) +
                                " strings; at most " + std::to_string(limits.max_stops) +
                                " are taken");
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    const std::string& s = p.stop[i];
    if (s.empty() || s.size() > limits.max_stop_bytes) {
      return InvalidArgumentError("stop[" + std::to_string(i) + "] must hold 1.." +
                                  std::to_string(limits.max_stop_bytes) + " bytes, not " +
                                  std::to_string(s.size()));
    }
    if (!IsUtf8(s)) {
      return InvalidArgumentError("stop[" + std::to_string(i) + "] is not valid UTF-8");
    }
  }
  return Status::Ok();
}

}  // namespace dmoe::router
