// HTTP request and response values shared by net::HttpServer and net::HttpClient.
//
// These types are plain values with no Boost in sight: handlers in expert_server, router and gating
// include this header without paying for Beast. Bodies are contiguous byte vectors, read straight
// from the socket into their final place (see http_server.cc), never through std::string.
#ifndef DMOE_NET_HTTP_MESSAGE_H_
#define DMOE_NET_HTTP_MESSAGE_H_

#include <atomic>
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
  // The value of `name` in the query ("a=1&challenge=..."), as sent (not percent-decoded), or
  // nullopt; the first when it is repeated.
  std::optional<std::string_view> QueryValue(std::string_view name) const;
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

// A response whose body goes out in pieces as they are made (Transfer-Encoding: chunked), e.g.
// Server-Sent Events. Safe from any thread; never blocks. Handles are shared_ptrs: when the last
// one is dropped without End, the body is ended as End would (so a dropped stream never hangs a
// connection).
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Queues `data` as the next piece of the body. False, and `data` dropped, once the stream is
  // closed: the client went away, a write made no progress for write_timeout, the server stops,
  // or the pieces queued and not yet written passed the stream's byte limit (a client that does not
  // read is cut: the connection is closed). An empty `data` is a no-op returning !closed().
  virtual bool Write(std::string_view data) = 0;
  // Ends the body (the last chunk) after the queued pieces. Idempotent; later Writes return false.
  virtual void End() = 0;
  // True once End was called or the stream was cut or the client went away. Producers poll it
  // between pieces to stop work nobody will read.
  virtual bool closed() const = 0;
};

// Delivers a handler's answer, whole (operator()) or streamed (Stream). Copyable; may be called
// from any thread, at any later time. The first call of either wins and later ones are ignored (a
// later Stream returns a stream that is closed already). When the last copy is destroyed without
// having been called, the request is answered 500 internal, so a dropped request never hangs a
// connection.
class Responder {
 public:
  // Where a response goes. The server implements it per request; tests may implement Deliver
  // alone to call handlers without a socket. A Sink is owned by shared_ptrs (the Responder's).
  class Sink : public std::enable_shared_from_this<Sink> {
   public:
    virtual ~Sink() = default;
    virtual void Deliver(Response response) = 0;
    // Starts a streamed answer. The default collects the pieces and Delivers them as one whole
    // Response when the stream is ended (End, or the last handle dropped); it never cuts and has
    // no byte limit.
    virtual std::shared_ptr<ResponseStream> BeginStream(int status, std::string content_type,
                                                        Headers headers);
  };

  explicit Responder(std::shared_ptr<Sink> sink)
      : sink_(std::move(sink)), called_(std::make_shared<std::atomic<bool>>(false)) {}
  void operator()(Response response) const {
    if (!called_->exchange(true)) sink_->Deliver(std::move(response));
  }
  // Answers with `status`, `content_type` and `headers` at once, then the body in the pieces the
  // returned stream is given. On the server the body is chunked and the connection closes after
  // it (Connection: close; see HttpServer). Counts as this Responder's one call.
  std::shared_ptr<ResponseStream> Stream(int status, std::string content_type,
                                         Headers headers = {}) const;

 private:
  std::shared_ptr<Sink> sink_;
  std::shared_ptr<std::atomic<bool>> called_;  // Shared by the copies: the first call wins.
};

}  // namespace dmoe::net

#endif  // DMOE_NET_HTTP_MESSAGE_H_
