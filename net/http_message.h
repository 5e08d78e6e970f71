// HTTP request and response values shared by net::HttpServer and net::HttpClient.
//
// These types are plain values with no Boost in sight: handlers in expert_server, router and gating
// include this header without paying for Beast. Bodies are contiguous byte vectors, read straight
// from the socket into their final place (see http_server.cc), never through std::string.
#ifndef DMOE_NET_HTTP_MESSAGE_H_
#define DMOE_NET_HTTP_MESSAGE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace dmoe::net {

using Bytes = std::vector<uint8_t>;

// Header fields in arrival order; names compare case-insensitively (RFC 7230). Duplicates are kept.
class Headers {
 public:
  using Field = std::pair<std::string, std::string>;

  Headers() = default;
  Headers(std::initializer_list<Field> fields) : fields_(fields) {}

  // The first value of `name`, or nullopt. The view lives as long as this object is not modified.
  std::optional<std::string_view> Get(std::string_view name) const;
  bool Has(std::string_view name) const { return Get(name).has_value(); }
  // Replaces every field called `name` with a single one.
  void Set(std::string name, std::string value);
  // Appends a field, keeping existing ones of the same name.
  void Add(std::string name, std::string value);
  void Remove(std::string_view name);

  const std::vector<Field>& fields() const { return fields_; }
  bool empty() const { return fields_.empty(); }
  size_t size() const { return fields_.size(); }

 private:
  std::vector<Field> fields_;
};

// Case-insensitive ASCII comparison, as HTTP field names need.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// Content-Type, checked the same way by every route that takes a body. The media type is the
// header's value before any ';' parameter, without surrounding spaces ("application/json;
// charset=utf-8" is "application/json"), and empty when there is no Content-Type.
std::string_view MediaTypeOf(const Headers& headers);
// Whether the media type is `type`, ignoring case (RFC 7231).
bool HasMediaType(const Headers& headers, std::string_view type);
// Safetensors bodies (PROTOCOL section 2) are sent as kSafetensorsType; the generic
// application/octet-stream is taken for them too.
inline constexpr char kSafetensorsType[] = "application/x-safetensors";
bool IsSafetensorsBody(const Headers& headers);

// What the server knows once a request's header is in, before any of its body is read. Route
// `pre_body` checks (authentication, content-type refusal) see exactly this.
struct RequestHead {
  std::string method;  // As sent: "GET", "POST", ...
  std::string target;  // The request-target as sent: path plus optional "?query".
  std::string path;    // The target without its query; what PROTOCOL section 4 signs.
  std::string query;   // The part after '?', without it; empty when absent.
  Headers headers;
  // Declared Content-Length; nullopt for a chunked body or none.
  std::optional<uint64_t> content_length;
  bool chunked = false;
  // Values of the route's `{name}` segments, in pattern order.
  std::vector<std::pair<std::string, std::string>> params;
  // The peer as "ip:port" (server side only).
  std::string remote_address;

  // The value of path parameter `name`, or nullopt.
  std::optional<std::string_view> Param(std::string_view name) const;
};

struct Request : RequestHead {
  Bytes body;
  std::string_view body_view() const {
    return {reinterpret_cast<const char*>(body.data()), body.size()};
  }
};

struct Response {
  int status = 200;
  std::string content_type;  // Sent as Content-Type when not empty.
  Headers headers;           // Extra fields; Content-Length is always computed by net.
  Bytes body;

  std::string_view body_view() const {
    return {reinterpret_cast<const char*>(body.data()), body.size()};
  }

  // `status` with Content-Type application/json and `json` as the body.
  static Response Json(int status, std::string_view json);
  // `status` with the given content type and body.
  static Response Binary(int status, std::string content_type, Bytes body);
  static Response Text(int status, std::string content_type, std::string_view text);
  // The PROTOCOL section 3 error body for a non-OK status, with HTTP status HttpStatus(code) and
  // `Retry-After: 1` for resource_exhausted and unavailable.
  static Response Error(const Status& status);
};

// The Status a response stands for: OK below 400; otherwise the code and message of a PROTOCOL
// section 3 body, or, when the body is not one, a code derived from the HTTP status (429 ->
// resource_exhausted, 502/503 -> unavailable, 504 -> deadline_exceeded, other 5xx -> internal,
// other 4xx -> invalid_argument).
Status StatusFromResponse(const Response& response);

// Delivers a handler's answer. Copyable; may be called from any thread, at any later time. The
// first call wins and later ones are ignored. When the last copy is destroyed without having been
// called, the request is answered 500 internal, so a dropped request never hangs a connection.
class Responder {
 public:
  // Where a response goes. The server implements it per request; tests may implement it to call
  // handlers without a socket.
  class Sink {
   public:
    virtual ~Sink() = default;
    virtual void Deliver(Response response) = 0;
  };

  explicit Responder(std::shared_ptr<Sink> sink) : sink_(std::move(sink)) {}
  void operator()(Response response) const { sink_->Deliver(std::move(response)); }

 private:
  std::shared_ptr<Sink> sink_;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_HTTP_MESSAGE_H_
