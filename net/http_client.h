// HttpClient and WsClient: the pooled asynchronous clients of dmoe (gating, router, CLI).
//
//   net::HttpClient client;
//   client.Request("POST", "http://10.0.0.5:8000/v1/experts/ffn.3.14/forward", headers, body,
//                  net::Deadline::clock::now() + 2s, [](Result<net::Response> r) { ... });
//
// Every call has a deadline (covering resolve, connect, write and read) and ends in exactly one
// callback. Errors are Status values (PROTOCOL section 3 codes), never Beast error codes:
//   - connection refused, reset or closed early, unresolvable host: kUnavailable;
//   - the deadline passed: kDeadlineExceeded;
//   - cancelled through the returned CallHandle: kUnavailable with a "cancelled" message;
//   - an HTTP response with status >= 400: StatusFromResponse(response), i.e. the code and message
//     of its PROTOCOL error body, unless RequestOptions::raw_error_responses asks for the response.
// Connections are kept alive and reused per host:port. A reused connection that turns out to have
// been closed by the server before any byte of the answer arrived is retried once on a new one.
//
// Threads: callbacks run on one of the client's io threads (the client's own, or the IoContext
// passed in) and must not block. Request() and Cancel() may be called from any thread.
#ifndef DMOE_NET_HTTP_CLIENT_H_
#define DMOE_NET_HTTP_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "net/buffer_pool.h"
#include "net/http_message.h"
#include "net/io_context.h"
#include "net/websocket.h"

namespace dmoe::net {

using Deadline = std::chrono::steady_clock::time_point;

struct HttpClientOptions {
  int threads = 1;  // Used only when no IoContext is passed in.
  size_t max_idle_per_host = 16;
  // Idle pooled connections older than this are not reused (servers close idle ones at 60 s).
  std::chrono::milliseconds max_idle_age{30'000};
  uint64_t max_response_body_bytes = 1ull << 30;
  uint32_t max_header_bytes = 64 << 10;
  // Where response bodies are read into and request bodies given back once sent
  // (net/buffer_pool.h); it must outlive the client. Null: the client keeps its own.
  BufferPool* buffer_pool = nullptr;
};

struct RequestOptions {
  // Deliver any complete HTTP response as a value, whatever its status.
  bool raw_error_responses = false;
  // This call's response body limit, when lower than the client's (0: the client's). A larger
  // declared body is refused resource_exhausted before it is read; a chunked one is cut there.
  uint64_t max_response_body_bytes = 0;
};

namespace internal {
class CallBase;
}  // namespace internal

// Cancels one call. Copyable; a no-op once the call completed. Any thread.
class CallHandle {
 public:
  CallHandle() = default;
  explicit CallHandle(std::weak_ptr<internal::CallBase> call) : call_(std::move(call)) {}
  void Cancel() const;

 private:
  std::weak_ptr<internal::CallBase> call_;
};

using ResponseCallback = std::function<void(Result<Response>)>;

class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options = {}, IoContext* io = nullptr);
  // Cancels calls in flight (their callbacks run with kUnavailable), closes pooled connections and
  // stops the client's own threads. Must not run on one of the client's io threads.
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `method` `url` (http://host:port/path?query) with `headers` and `body`. Host,
  // Content-Length and Connection are set by net. A bad URL calls back (on an io thread) with
  // kInvalidArgument.
  CallHandle Request(std::string method, std::string_view url, Headers headers, Bytes body,
                     Deadline deadline, ResponseCallback callback, RequestOptions options = {});

  // Blocking form of Request for tests and CLIs. Must not be called from an io thread of this
  // client.
  Result<Response> Fetch(std::string method, std::string_view url, Headers headers, Bytes body,
                         std::chrono::milliseconds timeout, RequestOptions options = {});

  // Like Fetch, but hands the answer's body to `on_body` piece by piece as it arrives (chunked or
  // not) instead of collecting it; the returned Response has status and headers and an empty body.
  // on_body returning false stops reading and closes the connection (not an error). `timeout`
  // bounds the whole exchange; max_response_body_bytes bounds the sum of the pieces
  // (kPayloadTooLarge). on_body runs on an io thread of this client, one piece at a time, never
  // after FetchStream returned; an exception from it ends the call with kInternal. An answer with
  // status >= 400 is not streamed: its body is read whole and the call returns
  // StatusFromResponse, as Fetch does. Blocks; must not be called from an io thread of this client.
  Result<Response> FetchStream(std::string method, std::string_view url, Headers headers,
                               Bytes body, std::chrono::milliseconds timeout,
                               const std::function<bool(std::string_view piece)>& on_body);

  // TCP connections opened so far (new, not reused). Any thread.
  uint64_t connections_opened() const;
  // The pool response bodies are taken from: options.buffer_pool, or the client's own. Any thread.
  BufferPool& buffer_pool() const;

  struct State;  // Private to net's .cc files; named here so their sessions can share it.

 private:
  std::unique_ptr<IoContext> owned_io_;
  std::shared_ptr<State> state_;
};

// One-shot blocking request on a private client and io thread; for tests and CLIs.
Result<Response> Fetch(std::string method, std::string_view url, Headers headers = {},
                       Bytes body = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(10),
                       RequestOptions options = {});
// HttpClient::FetchStream on a private client and io thread; for tests and CLIs.
Result<Response> FetchStream(std::string method, std::string_view url, Headers headers, Bytes body,
                             std::chrono::milliseconds timeout,
                             const std::function<bool(std::string_view piece)>& on_body);

struct WsClientOptions {
  int threads = 1;  // Used only when no IoContext is passed in.
  uint64_t max_message_bytes = 64ull << 20;
  size_t max_queued_messages = 1024;
  std::chrono::milliseconds idle_timeout{300'000};
  // Where received messages are read into and sent ones given back once written
  // (net/buffer_pool.h); it must outlive the client and its connections. Null: the client keeps
  // its own.
  BufferPool* buffer_pool = nullptr;
};

using WsConnectCallback = std::function<void(Result<std::shared_ptr<WsConnection>>)>;

// WebSocket client. Connection failures map as for HttpClient; a refused upgrade maps the HTTP
// error response with StatusFromResponse (e.g. 401 unauthenticated). Callbacks (connect and the
// connection's WsHandlers) run on io threads and must not block.
class WsClient {
 public:
  explicit WsClient(WsClientOptions options = {}, IoContext* io = nullptr);
  // Closes every connection it made (on_close runs for each) and stops its own threads. Must not
  // run on one of its io threads.
  ~WsClient();
  WsClient(const WsClient&) = delete;
  WsClient& operator=(const WsClient&) = delete;

  // Opens a new connection to ws://host:port/path, sending `headers` with the upgrade request
  // (auth). The deadline covers resolve, connect and handshake; `handlers` serve the connection.
  void Connect(std::string_view url, Headers headers, WsHandlers handlers, Deadline deadline,
               WsConnectCallback callback);

  // As Connect, but shares one open connection per URL among callers: an open one is handed out
  // again, concurrent callers wait for the same handshake. The `headers` and `handlers` of the call
  // that opened the connection serve it; the others' are ignored (install a dispatcher that matches
  // answers by id). A closed connection is replaced on the next call.
  void GetShared(std::string_view url, Headers headers, WsHandlers handlers, Deadline deadline,
                 WsConnectCallback callback);

  // The pool messages are read into: options.buffer_pool, or the client's own. Any thread.
  BufferPool& buffer_pool() const;

  struct State;  // Private to net's .cc files; named here so their sessions can share it.

 private:
  std::unique_ptr<IoContext> owned_io_;
  std::shared_ptr<State> state_;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_HTTP_CLIENT_H_
