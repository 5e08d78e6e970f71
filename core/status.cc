#include "core/status.h"

#include <array>
#include <nlohmann/json.hpp>

namespace dmoe {
namespace {

struct CodeInfo {
  Code code;
  std::string_view name;
  int http;
  bool retryable;
};

constexpr std::array<CodeInfo, 11> kCodes = {{
    {Code::kOk, "ok", 200, false},
    {Code::kInvalidArgument, "invalid_argument", 400, false},
    {Code::kUnauthenticated, "unauthenticated", 401, false},
    {Code::kPermissionDenied, "permission_denied", 403, false},
    {Code::kNotFound, "not_found", 404, false},
    {Code::kPayloadTooLarge, "payload_too_large", 413, false},
    {Code::kUnsupportedMediaType, "unsupported_media_type", 415, false},
    {Code::kResourceExhausted, "resource_exhausted", 429, true},
    {Code::kInternal, "internal", 500, true},
    {Code::kUnavailable, "unavailable", 503, true},
    {Code::kDeadlineExceeded, "deadline_exceeded", 504, true},
}};

const CodeInfo& Info(Code code) {
  for (const auto& info : kCodes) {
    if (info.code == code) return info;
  }
  return kCodes[8];  // kInternal: unreachable for valid enum values.
}

}  // namespace

std::string_view CodeName(Code code) { return Info(code).name; }

std::optional<Code> CodeFromName(std::string_view name) {
  for (const auto& info : kCodes) {
    if (info.name == name) return info.code;
  }
  return std::nullopt;
}

int HttpStatus(Code code) { return Info(code).http; }

bool IsRetryable(Code code) { return Info(code).retryable; }

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

std::string Status::ToJson() const {
  nlohmann::json body;
  body["error"]["code"] = CodeName(code_);
  body["error"]["message"] = message_;
  // Replace rather than throw on invalid UTF-8 in a message that quotes outside input.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Status InvalidArgumentError(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
Status UnauthenticatedError(std::string m) { return Status(Code::kUnauthenticated, std::move(m)); }
Status PermissionDeniedError(std::string m) {
  return Status(Code::kPermissionDenied, std::move(m));
}
Status NotFoundError(std::string m) { return Status(Code::kNotFound, std::move(m)); }
Status PayloadTooLargeError(std::string m) { return Status(Code::kPayloadTooLarge, std::move(m)); }
Status UnsupportedMediaTypeError(std::string m) {
  return Status(Code::kUnsupportedMediaType, std::move(m));
}
Status ResourceExhaustedError(std::string m) {
  return Status(Code::kResourceExhausted, std::move(m));
}
Status InternalError(std::string m) { return Status(Code::kInternal, std::move(m)); }
Status UnavailableError(std::string m) { return Status(Code::kUnavailable, std::move(m)); }
Status DeadlineExceededError(std::string m) {
  return Status(Code::kDeadlineExceeded, std::move(m));
}

}  // namespace dmoe
