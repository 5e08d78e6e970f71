// HttpServer: the one HTTP/1.1 + WebSocket listener of dmoe (expert server, router).
//
//   net::HttpServer server(options);
//   server.Handle("POST", "/v1/experts/{uid}/forward",
//                 [](net::Request req, net::Responder respond) { ... respond(response) later ... },
//                 /*pre_body=*/CheckAuth);
//   DMOE_RETURN_IF_ERROR(server.Start());   // server.port() is the bound port
//   ...
//   server.Stop(std::chrono::seconds(5));
//
// Threads: one io_context run by a small pool (options.threads, or an IoContext passed in); every
// connection runs on its own strand. Handlers and pre_body checks are called on that strand, i.e.
// on a network thread, and must never block: they post work elsewhere and call the Responder when
// done, from any thread. An exception thrown by a handler is answered 500 and logged; it never
// escapes.
//
// Per connection: requests are served one at a time (the next request is read after the previous
// response is written; no pipelining). Limits: header bytes, body bytes (a declared Content-Length
// above the limit is answered 413 without reading the body, then the connection is closed; chunked
// bodies are cut off at the limit the same way), idle time before a request's header is complete,
// time to read a body and its minimum rate, time to write a response; connections in all and per
// remote IP. A declared length costs nothing until its bytes arrive: bodies are read into memory
// (and counted in max_held_request_bytes) in windows that grow with what arrived.
//
// Streamed answers (Responder::Stream): the status line and header go out at once with
// Transfer-Encoding: chunked (an HTTP/1.0 client gets the body unframed, ended by the close) and
// Connection: close; each batch of pieces queued while the previous write was in flight goes out
// as one chunk, each write bounded by write_timeout. The connection always closes after a
// streamed answer, so keep-alive never waits behind a stream. While a stream is open the server
// watches the socket: a client that closes it ends the stream (closed() becomes true). A stream
// whose unwritten pieces would pass max_stream_queued_bytes, or whose write makes no progress for
// write_timeout, is cut: the connection is closed and counted in slow_clients_cut. Stop() ends open
// streams at once (Writes return false, closed() is true), writes what was queued and the last
// chunk, and closes what is left at its deadline.
//
// Routing: a route is a method and a pattern of '/'-separated segments, each literal or `{name}`
// (one non-empty segment, available through RequestHead::Param). The first registered route that
// matches wins. An unknown path is 404 not_found; a known path with another method is 405 with an
// invalid_argument body (retrying elsewhere cannot help) and an Allow header. Malformed requests
// are 400 invalid_argument, after which the connection is closed. All error bodies are PROTOCOL
// section 3.
#ifndef DMOE_NET_HTTP_SERVER_H_
#define DMOE_NET_HTTP_SERVER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "net/buffer_pool.h"
#include "net/http_message.h"
#include "net/io_context.h"
#include "net/websocket.h"

namespace dmoe::net {

struct HttpServerOptions {
  std::string host = "127.0.0.1";  // IP literal or "localhost"; "0.0.0.0" for all interfaces.
  uint16_t port = 0;               // 0: pick a free port; see HttpServer::port().
  int threads = 2;                 // Used only when no IoContext is passed in.
  uint64_t max_body_bytes = 64ull << 20;  // Also the WebSocket message limit.
  uint32_t max_header_bytes = 16 << 10;
  // From the end of the previous response (or the accept) until the next request's header is in.
  std::chrono::milliseconds idle_timeout{60'000};
  // The per-request body deadline: a body (or the rest of a WebSocket message, once its first bytes
  // are in) must arrive within this much time spent reading it. Time a body waits unread for room
  // in max_held_request_bytes does not count: that wait is the server's, not the client's.
  std::chrono::milliseconds read_timeout{60'000};
  // The slowest upload kept: from min_upload_grace on, a body (or partial WebSocket message) must
  // have brought min_upload_bytes_per_second for every second past the grace, else it is cut:
  // answered 504 deadline_exceeded and closed (a WebSocket is closed). 0 turns the check off.
  uint64_t min_upload_bytes_per_second = 64 << 10;
  std::chrono::milliseconds min_upload_grace{1'000};
  std::chrono::milliseconds write_timeout{60'000};
  // A streamed answer's pieces queued by the handler and not yet written (the one being written
  // included). A Write that would pass this cuts the stream: its client does not read.
  uint64_t max_stream_queued_bytes = 1 << 20;
  // WebSocket: messages queued by Send beyond the one being written.
  size_t ws_max_queued_messages = 1024;
  // WebSocket: answers a client has not read count against it. While more than this many bytes,
  // or more than ws_max_queued_messages / 2 messages, wait to be written to a connection, its next
  // request is not read; a write that makes no progress for write_timeout closes it.
  uint64_t ws_max_queued_bytes = 16ull << 20;
  // Connections open at once (HTTP and WebSocket), in all and from one remote IP address; 0 = no
  // limit. A connection past either is answered 503 unavailable with Retry-After and closed.
  size_t max_connections = 4096;
  size_t max_connections_per_ip = 256;
  // WebSocket: a connection with no traffic this long is pinged, then closed if still silent.
  std::chrono::milliseconds ws_idle_timeout{300'000};
  // Bytes of requests the server holds at once; 0 = no limit. Only bytes that arrived count: an
  // HTTP body is read in windows counted before their bytes are read (the first as large as what
  // has arrived, each next as large as what arrived so far, 4 KiB to 1 MiB), and counts until its
  // response is written; a WebSocket message likewise from its first bytes until on_message
  // returns or, for a request begun with WsConnection::TryBeginRequest, until its EndRequest. A
  // window that does not fit leaves the rest of its body or message unread in the socket until
  // earlier requests end: backpressure on the clients instead of memory in the server. Bodies being
  // read go before new ones; when every held byte belongs to such parked bodies, the oldest goes on
  // past the limit, alone, so a request larger than the whole budget still gets in.
  uint64_t max_held_request_bytes = 0;
  std::string server_name = "dmoe";  // Sent as the Server header.
  // Where request bodies are read into and response bodies and WebSocket messages are given back
  // once written (net/buffer_pool.h); it must outlive the server. Null: the server keeps its own.
  BufferPool* buffer_pool = nullptr;
};

// Asynchronous request handler; see the threading contract above.
using Handler = std::function<void(Request request, Responder respond)>;
// Runs when a request's header is in, before any of its body is read. A non-OK status is answered
// as PROTOCOL section 3 (e.g. 401, 415) and the unread body is not read: the connection is closed.
using HeadCheck = std::function<Status(const RequestHead& head)>;

class HttpServer {
 public:
  // When `io` is null the server owns an IoContext with options.threads threads. A shared `io`
  // must outlive the server.
  explicit HttpServer(HttpServerOptions options, IoContext* io = nullptr);
  // Stop(0) if still running.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers routes. Only before Start().
  void Handle(std::string method, std::string pattern, Handler handler, HeadCheck pre_body = {});
  // A WebSocket route: a GET with an upgrade to this pattern is checked by `pre_upgrade` (non-OK is
  // answered as an HTTP error instead of the upgrade), then becomes a WsConnection with `handlers`.
  void HandleWebSocket(std::string pattern, WsHandlers handlers, HeadCheck pre_upgrade = {});

  // Binds, listens and starts accepting. kUnavailable when the address cannot be bound,
  // kInvalidArgument for a bad host.
  Status Start();
  // The bound port (after a successful Start).
  uint16_t port() const;
  // What was registered, as "METHOD /pattern" ("WEBSOCKET /pattern" for a WebSocket route), in
  // registration order. Start() logs each at debug level as "net: serves METHOD /pattern", which
  // is how tests outside the process (the OpenAPI walk) learn every route a server answers.
  std::vector<std::string> routes() const;

  // Graceful stop: stops accepting, closes idle connections, lets requests whose header is already
  // in finish and answer (with Connection: close) for up to `deadline`, closes WebSockets, then
  // closes whatever is left. Blocks; must not be called from a network thread. Idempotent.
  void Stop(std::chrono::milliseconds deadline = std::chrono::seconds(5));

  // Connections accepted since Start (for tests and metrics). Any thread.
  uint64_t accepted_connections() const;
  // HTTP and WebSocket connections open now. Any thread.
  size_t open_connections() const;
  // Request bytes counted against max_held_request_bytes now, and connections whose next body or
  // message waits for room (both 0 without a limit). Any thread.
  uint64_t held_request_bytes() const;
  size_t requests_waiting() const;
  // Since Start: connections refused past the caps; clients cut as too slow (bodies and WebSocket
  // messages below the minimum rate or past read_timeout, WebSocket answers and streamed answers
  // not taken within write_timeout, streams past max_stream_queued_bytes); accept failures that
  // paused the accept loop. Any thread.
  uint64_t refused_connections() const;
  uint64_t slow_clients_cut() const;
  uint64_t accept_backoffs() const;
  // Bytes queued on streamed answers and not yet written, over all connections now. Any thread.
  uint64_t stream_queued_bytes() const;
  // The pool request bodies are taken from: options.buffer_pool, or the server's own. Handlers
  // give a request's body back here once they are done with its bytes, and take answer bodies
  // from it. Any thread.
  BufferPool& buffer_pool() const;

  struct State;  // Private to http_server.cc; named here so its sessions can share it.

 private:
  std::unique_ptr<IoContext> owned_io_;
  IoContext* io_;
  std::shared_ptr<State> state_;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_HTTP_SERVER_H_
