#include "net/http_message.h"

#include <mutex>
#include <nlohmann/json.hpp>

#include "net/websocket.h"

namespace dmoe::net {
namespace {

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

Code CodeFromHttpStatus(int status) {
  switch (status) {
    case 401:
      return Code::kUnauthenticated;
    case 403:
      return Code::kPermissionDenied;
    case 404:
      return Code::kNotFound;
    case 413:
      return Code::kPayloadTooLarge;
    case 415:
      return Code::kUnsupportedMediaType;
    case 429:
      return Code::kResourceExhausted;
    case 502:
    case 503:
      return Code::kUnavailable;
    case 504:
      return Code::kDeadlineExceeded;
    default:
      return status >= 500 ? Code::kInternal : Code::kInvalidArgument;
  }
}

// What a Responder's second call gets: nothing it writes goes anywhere.
class ClosedStream final : public ResponseStream {
 public:
  bool Write(std::string_view) override { return false; }
  void End() override {}
  bool closed() const override { return true; }
};

// Responder::Sink's default stream: the pieces become one Response, Delivered once at the end.
class CollectingStream final : public ResponseStream {
 public:
  CollectingStream(std::shared_ptr<Responder::Sink> sink, Response head)
      : sink_(std::move(sink)), response_(std::move(head)) {}
  ~CollectingStream() override { End(); }

  bool Write(std::string_view data) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (sink_ == nullptr) return false;
    response_.body.insert(response_.body.end(), data.begin(), data.end());
    return true;
  }

  void End() override {
    std::shared_ptr<Responder::Sink> sink;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sink = std::move(sink_);
      sink_ = nullptr;
    }
    if (sink) sink->Deliver(std::move(response_));  // Alone here once sink_ is null.
  }

  bool closed() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return sink_ == nullptr;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<Responder::Sink> sink_;  // Null once ended.
  Response response_;
};

}  // namespace

std::shared_ptr<ResponseStream> Responder::Sink::BeginStream(int status, std::string content_type,
                                                             Headers headers) {
  Response head;
  head.status = status;
  head.content_type = std::move(content_type);
  head.headers = std::move(headers);
  return std::make_shared<CollectingStream>(shared_from_this(), std::move(head));
}

std::shared_ptr<ResponseStream> Responder::Stream(int status, std::string content_type,
                                                  Headers headers) const {
  if (called_->exchange(true)) return std::make_shared<ClosedStream>();
  return sink_->BeginStream(status, std::move(content_type), std::move(headers));
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::string_view MediaTypeOf(const Headers& headers) {
  std::string_view type = headers.Get("Content-Type").value_or("");
  type = type.substr(0, type.find(';'));
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  return type;
}

bool HasMediaType(const Headers& headers, std::string_view type) {
  return EqualsIgnoreCase(MediaTypeOf(headers), type);
}

bool IsSafetensorsBody(const Headers& headers) {
  return HasMediaType(headers, kSafetensorsType) ||
         HasMediaType(headers, "application/octet-stream");
}

std::optional<std::string_view> Headers::Get(std::string_view name) const {
  for (const auto& [k, v] : fields_) {
    if (EqualsIgnoreCase(k, name)) return std::string_view(v);
  }
  return std::nullopt;
}

void Headers::Set(std::string name, std::string value) {
  Remove(name);
  fields_.emplace_back(std::move(name), std::move(value));
}

void Headers::Add(std::string name, std::string value) {
  fields_.emplace_back(std::move(name), std::move(value));
}

void Headers::Remove(std::string_view name) {
  std::erase_if(fields_, [&](const Field& f) { return EqualsIgnoreCase(f.first, name); });
}

std::optional<std::string_view> RequestHead::Param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return std::string_view(v);
  }
  return std::nullopt;
}

std::optional<std::string_view> RequestHead::QueryValue(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    std::string_view part = rest.substr(0, rest.find('&'));
    rest.remove_prefix(std::min(rest.size(), part.size() + 1));
    if (part.size() > name.size() && part.substr(0, name.size()) == name &&
        part[name.size()] == '=') {
      return part.substr(name.size() + 1);
    }
  }
  return std::nullopt;
}

Response Response::Json(int status, std::string_view json) {
  return Text(status, "application/json", json);
}

Response Response::Binary(int status, std::string content_type, Bytes body) {
  Response r;
  r.status = status;
  r.content_type = std::move(content_type);
  r.body = std::move(body);
  return r;
}

Response Response::Text(int status, std::string content_type, std::string_view text) {
  return Binary(status, std::move(content_type), Bytes(text.begin(), text.end()));
}

Response Response::Error(const Status& status) {
  Status s = status.ok() ? InternalError("an OK status was sent as an error") : status;
  Response r = Json(HttpStatus(s.code()), s.ToJson());
  if (s.code() == Code::kResourceExhausted || s.code() == Code::kUnavailable) {
    r.headers.Set("Retry-After", "1");
  }
  return r;
}

Status StatusFromResponse(const Response& response) {
  if (response.status < 400) return Status::Ok();
  Code fallback = CodeFromHttpStatus(response.status);
  nlohmann::json body =
      nlohmann::json::parse(response.body_view(), nullptr, /*allow_exceptions=*/false);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    const auto& err = body["error"];
    std::optional<Code> code;
    if (err.contains("code") && err["code"].is_string()) {
      code = CodeFromName(err["code"].get<std::string>());
    }
    std::string message;
    if (err.contains("message") && err["message"].is_string()) {
      message = err["message"].get<std::string>();
    }
    if (code && *code != Code::kOk) return Status(*code, std::move(message));
  }
  std::string snippet(response.body_view().substr(0, 200));
  return Status(fallback, "HTTP " + std::to_string(response.status) +
                              (snippet.empty() ? std::string() : ": " + snippet));
}

bool WsConnection::TryBeginRequest(int limit) {
  int n = in_flight_.load();
  while (n < limit) {
    if (in_flight_.compare_exchange_weak(n, n + 1)) {
      OnRequestBegun();
      return true;
    }
  }
  return false;
}

void WsConnection::EndRequest() {
  in_flight_.fetch_sub(1);
  OnRequestEnded();
}

}  // namespace dmoe::net
