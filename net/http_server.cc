// HttpServer: listener and HTTP session, after Beast's session pattern (STYLE.md): each connection
// gets a strand at accept, the session lives while a handler bound with shared_from_this() is
// pending, every read and write has a timeout, and there is one outstanding write per connection.
//
// A request is read in two steps: the header with an empty-body parser (so limits, routing and the
// route's pre_body check run before any body byte is read), then the body. A body with a
// Content-Length is read straight from the socket into its final vector (the fast path, ~memcpy
// speed); a chunked body goes through a parser with VectorBody.
#include "net/http_server.h"

#include "net/beast_internal.h"
#include "net/buffer_pool.h"

#include <spdlog/spdlog.h>
#include <array>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <future>

namespace dmoe::net {

using namespace internal;  // NOLINT: the Beast aliases of this file's private half.

namespace {

struct Route {
  std::string method;  // Empty for a WebSocket route.
  std::vector<std::string> segments;
  Handler handler;
  HeadCheck check;
  bool websocket = false;
  WsHandlers ws_handlers;
};

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) out.emplace_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool IsParam(const std::string& segment) {
  return segment.size() > 2 && segment.front() == '{' && segment.back() == '}';
}

// Matches `path` against a route's segments, filling `params` on success.
bool Match(const Route& route, const std::vector<std::string>& path,
           std::vector<std::pair<std::string, std::string>>* params) {
  if (route.segments.size() != path.size()) return false;
  std::vector<std::pair<std::string, std::string>> found;
  for (size_t i = 0; i < path.size(); ++i) {
    const std::string& seg = route.segments[i];
    if (IsParam(seg)) {
      found.emplace_back(seg.substr(1, seg.size() - 2), path[i]);
    } else if (seg != path[i]) {
      return false;
    }
  }
  *params = std::move(found);
  return true;
}

}  // namespace

struct HttpServer::State {
  HttpServerOptions options;
  std::shared_ptr<ByteBudget> budget;  // Null without max_held_request_bytes.
  std::vector<Route> routes;           // Immutable after Start.
  Registry registry;
  std::atomic<uint64_t> accepted{0};
  std::atomic<bool> stopping{false};
  std::unique_ptr<tcp::acceptor> acceptor;  // Used on `acceptor_strand` only.
  std::optional<asio::strand<asio::io_context::executor_type>> acceptor_strand;
  uint16_t port = 0;
  bool started = false;
  bool stopped = false;

  WsOptions ws_options() const {
    WsOptions o;
    o.max_message_bytes = options.max_body_bytes;
    o.max_queued_messages = options.ws_max_queued_messages;
    o.idle_timeout = options.ws_idle_timeout;
    o.handshake_timeout = options.read_timeout;
    o.budget = budget;
    return o;
  }
};

namespace {

class HttpSession;

// Carries one handler's answer back to its session's strand. Shared by every copy of the Responder.
class SessionSink final : public Responder::Sink {
 public:
  explicit SessionSink(std::shared_ptr<HttpSession> session) : session_(std::move(session)) {}
  ~SessionSink() override {
    if (!responded_.load()) {
      Deliver(Response::Error(InternalError("the handler dropped the request without answering")));
    }
  }
  void Deliver(Response response) override;

 private:
  std::shared_ptr<HttpSession> session_;
  std::atomic<bool> responded_{false};
};

class HttpSession final : public Closeable, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket&& socket, std::shared_ptr<HttpServer::State> server)
      : stream_(std::move(socket)),
        body_timer_(stream_.get_executor()),
        server_(std::move(server)) {}

  ~HttpSession() override {
    Unregister();
    ReleaseHeld();
  }

  void Start() {
    registry_id_ = server_->registry.Add(weak_from_this());
    beast_error ec;
    auto remote = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = remote.address().to_string() + ":" + std::to_string(remote.port());
    // We need to be executing within the strand to perform async operations on the stream.
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->DoReadHead(); });
  }

  void Shutdown(bool force) override {
    asio::post(stream_.get_executor(), [self = shared_from_this(), force] {
      self->stopping_ = true;
      // A connection waiting for a request, or for room to read one, has nothing in flight:
      // close it now.
      if (force || self->state_ == StateKind::kReadingHead ||
          self->state_ == StateKind::kWaitingBudget) {
        self->CloseSocket();
      }
    });
  }

  auto executor() { return stream_.get_executor(); }

  // Called on the strand by SessionSink.
  void WriteResponse(Response response) {
    if (state_ != StateKind::kHandling) return;
    Write(std::move(response), /*close=*/false);
  }

 private:
  enum class StateKind {
    kReadingHead,
    kWaitingBudget,
    kReadingBody,
    kHandling,
    kWriting,
    kDraining,
    kClosed
  };

  const HttpServerOptions& options() const { return server_->options; }

  void DoReadHead() {
    state_ = StateKind::kReadingHead;
    if (stopping_) return CloseSocket();
    request_ = Request{};
    route_ = nullptr;
    head_parser_.emplace();
    head_parser_->header_limit(options().max_header_bytes);
    head_parser_->body_limit(kNoBeastLimit);  // Checked by us, so that we answer 413 ourselves.
    stream_.expires_after(options().idle_timeout);
    http::async_read_header(
        stream_, buffer_, *head_parser_,
        [self = shared_from_this()](beast_error ec, size_t) { self->OnHead(ec); });
  }

  void OnHead(beast_error ec) {
    if (ec) {
      if (IsConnectionClosed(ec) || ec == beast::error::timeout ||
          ec == asio::error::operation_aborted) {
        return CloseSocket();
      }
      if (ec == http::error::header_limit) {
        return Write(
            Response::Error(InvalidArgumentError(
                "request header exceeds " + std::to_string(options().max_header_bytes) + " bytes")),
            /*close=*/true);
      }
      return Write(Response::Error(InvalidArgumentError("malformed HTTP request: " + ec.message())),
                   /*close=*/true);
    }
    auto& header = head_parser_->get();
    request_.method = std::string(header.method_string());
    request_.target = std::string(header.target());
    size_t q = request_.target.find('?');
    request_.path = request_.target.substr(0, q);
    if (q != std::string::npos) request_.query = request_.target.substr(q + 1);
    request_.headers = ToHeaders(header);
    if (auto len = head_parser_->content_length()) request_.content_length = *len;
    request_.chunked = head_parser_->chunked();
    request_.remote_address = remote_;
    keep_alive_ = header.keep_alive();
    body_pending_ = request_.chunked || request_.content_length.value_or(0) > 0;

    std::vector<std::string> path = SplitPath(request_.path);
    if (websocket::is_upgrade(header)) {
      for (const Route& r : server_->routes) {
        if (r.websocket && Match(r, path, &request_.params)) return Upgrade(r);
      }
    }
    std::string allowed;
    for (const Route& r : server_->routes) {
      if (r.websocket || !Match(r, path, &request_.params)) continue;
      if (r.method == request_.method) {
        route_ = &r;
        break;
      }
      if (allowed.find(r.method) == std::string::npos) {
        allowed += (allowed.empty() ? "" : ", ") + r.method;
      }
    }
    for (const Route& r : server_->routes) {  // A WebSocket route answers plain GETs as 400.
      if (route_ == nullptr && r.websocket && Match(r, path, &request_.params)) {
        return Refuse(InvalidArgumentError(request_.path + " expects a WebSocket upgrade"));
      }
    }
    if (route_ == nullptr) {
      if (allowed.empty()) {
        return Refuse(NotFoundError("no route for " + request_.method + " " + request_.path));
      }
      Response r = Response::Error(InvalidArgumentError("method " + request_.method +
                                                        " is not allowed for " + request_.path +
                                                        "; allowed: " + allowed));
      r.status = 405;
      r.headers.Set("Allow", allowed);
      return Write(std::move(r), /*close=*/body_pending_);
    }
    if (request_.content_length.value_or(0) > options().max_body_bytes) {
      return Refuse(PayloadTooLargeError(
          "request body of " + std::to_string(*request_.content_length) +
          " bytes exceeds the limit of " + std::to_string(options().max_body_bytes) + " bytes"));
    }
    if (route_->check) {
      Status s = RunCheck(*route_);
      if (!s.ok()) return Refuse(s);
    }
    AdmitBody();
  }

  // Waits, with the body unread, until the server's request budget has room for it.
  void AdmitBody() {
    const uint64_t bytes = request_.chunked ? 0 : request_.content_length.value_or(0);
    if (!server_->budget || bytes == 0) return StartBody();
    state_ = StateKind::kWaitingBudget;
    auto admitted = [self = shared_from_this(), bytes] {
      asio::post(self->executor(), [self, bytes] {
        self->held_bytes_ = bytes;
        // Closed while waiting: give the room back.
        if (self->state_ != StateKind::kWaitingBudget) return self->ReleaseHeld();
        self->StartBody();
      });
    };
    if (!server_->budget->Acquire(bytes, std::move(admitted))) return;
    held_bytes_ = bytes;
    StartBody();
  }

  void StartBody() {
    auto expect = request_.headers.Get("Expect");
    if (body_pending_ && expect && EqualsIgnoreCase(*expect, "100-continue")) {
      // The client waits for this before sending a large body; answer at once rather than let it
      // time out.
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      stream_.expires_after(options().write_timeout);
      return asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                               [self = shared_from_this()](beast_error ec, size_t) {
                                 if (ec) return self->CloseSocket();
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  Status RunCheck(const Route& route) {
    try {
      return route.check(request_);
    } catch (const std::exception& e) {
      spdlog::error("net: pre_body check for {} threw: {}", request_.path, e.what());
      return InternalError("request check failed");
    }
  }

  // Answers an error for a request whose body we will not read; the connection closes after it when
  // a body is pending, since its bytes would otherwise be taken for the next request.
  void Refuse(const Status& status) { Write(Response::Error(status), /*close=*/body_pending_); }

  void Upgrade(const Route& route) {
    if (route.check) {
      Status s = RunCheck(route);
      if (!s.ok()) return Refuse(s);
    }
    if (server_->stopping.load()) return Refuse(UnavailableError("server is stopping"));
    stream_.expires_never();
    state_ = StateKind::kClosed;  // The stream now belongs to the WebSocket session.
    Unregister();
    auto ws =
        std::make_shared<WsSession>(std::move(stream_), std::move(request_), server_->ws_options(),
                                    route.ws_handlers, &server_->registry);
    ws->Accept(head_parser_->release());
  }

  void ReadBody() {
    state_ = StateKind::kReadingBody;
    stream_.expires_after(options().read_timeout);
    if (request_.chunked) {
      body_parser_.emplace(std::move(*head_parser_));
      body_parser_->body_limit(options().max_body_bytes);
      return http::async_read(
          stream_, buffer_, *body_parser_,
          [self = shared_from_this()](beast_error ec, size_t) { self->OnChunkedBody(ec); });
    }
    size_t total = static_cast<size_t>(request_.content_length.value_or(0));
    if (total == 0) return Dispatch();
    request_.body = BufferPool::Shared().Take(total);
    request_.body.resize(total);
    // Whatever followed the header in the read buffer is the start of the body.
    size_t have = std::min(total, buffer_.size());
    asio::buffer_copy(asio::buffer(request_.body.data(), have), buffer_.data());
    buffer_.consume(have);
    if (have == total) return Dispatch();
    // Straight from the socket, with one timer for the whole body: tcp_stream's per-operation
    // timeout costs a timer update on every read and measured ~40% slower on 64 MiB bodies.
    stream_.expires_never();
    body_timer_.expires_after(options().read_timeout);
    body_timer_.async_wait([self = shared_from_this()](beast_error ec) {
      if (!ec) self->CloseSocket();
    });
    asio::async_read(stream_.socket(), asio::buffer(request_.body.data() + have, total - have),
                     [self = shared_from_this()](beast_error ec, size_t) {
                       self->body_timer_.cancel();
                       if (ec || self->state_ != StateKind::kReadingBody)
                         return self->CloseSocket();
                       self->Dispatch();
                     });
  }

  void OnChunkedBody(beast_error ec) {
    if (ec == http::error::body_limit) {
      return Write(Response::Error(
                       PayloadTooLargeError("chunked request body exceeds the limit of " +
                                            std::to_string(options().max_body_bytes) + " bytes")),
                   /*close=*/true);
    }
    if (ec) {
      if (IsConnectionClosed(ec) || ec == beast::error::timeout) return CloseSocket();
      return Write(Response::Error(InvalidArgumentError("malformed HTTP body: " + ec.message())),
                   /*close=*/true);
    }
    request_.body = std::move(body_parser_->get().body());
    body_parser_.reset();
    if (server_->budget) {
      // A chunked body's size is known only now; it counts, but it was not held back.
      server_->budget->Charge(request_.body.size());
      held_bytes_ = request_.body.size();
    }
    Dispatch();
  }

  void Dispatch() {
    state_ = StateKind::kHandling;
    body_pending_ = false;
    stream_.expires_never();
    auto sink = std::make_shared<SessionSink>(shared_from_this());
    const Route* route = route_;
    std::string path = request_.path;
    try {
      route->handler(std::move(request_), Responder(sink));
    } catch (const std::exception& e) {
      spdlog::error("net: handler for {} {} threw: {}", route->method, path, e.what());
      sink->Deliver(Response::Error(InternalError("the handler failed")));
    }
  }

  void Write(Response r, bool close) {
    state_ = StateKind::kWriting;
    close_after_write_ = close || !keep_alive_ || stopping_;
    response_.emplace(static_cast<http::status>(r.status), 11);
    for (auto& [k, v] : r.headers.fields()) response_->set(k, v);
    response_->set(http::field::server, options().server_name);
    if (!r.content_type.empty()) response_->set(http::field::content_type, r.content_type);
    response_->body() = std::move(r.body);
    response_->keep_alive(!close_after_write_);
    response_->prepare_payload();
    stream_.expires_after(options().write_timeout);
    http::async_write(stream_, *response_,
                      [self = shared_from_this()](beast_error ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast_error ec) {
    BufferPool::Shared().Give(std::move(response_->body()));
    response_.reset();
    ReleaseHeld();  // The request is answered.
    if (ec) return CloseSocket();
    if (close_after_write_) return Drain();
    DoReadHead();
  }

  // Closes after an answer: our side first (FIN), then a short, bounded read of whatever the peer
  // still sends, so that closing with unread bytes does not reset the connection before the peer
  // has read our answer.
  void Drain() {
    state_ = StateKind::kDraining;
    beast_error ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    drain_budget_ = 1 << 20;
    stream_.expires_after(std::chrono::seconds(1));
    DrainSome();
  }

  void DrainSome() {
    if (!scratch_) scratch_ = std::make_unique<std::array<char, 16384>>();
    stream_.async_read_some(asio::buffer(*scratch_),
                            [self = shared_from_this()](beast_error ec, size_t n) {
                              if (ec || n >= self->drain_budget_) return self->CloseSocket();
                              self->drain_budget_ -= n;
                              self->DrainSome();
                            });
  }

  // The registry tracks open connections, not objects: a Responder still held by a handler keeps
  // the object alive, and Stop() must not wait for it once the socket is closed.
  void Unregister() {
    if (registry_id_ != 0) server_->registry.Remove(registry_id_);
    registry_id_ = 0;
  }

  void ReleaseHeld() {
    if (held_bytes_ == 0) return;
    server_->budget->Release(held_bytes_);
    held_bytes_ = 0;
  }

  void CloseSocket() {
    ReleaseHeld();
    if (state_ == StateKind::kClosed) return;
    state_ = StateKind::kClosed;
    Unregister();
    beast_error ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  asio::steady_timer body_timer_;
  std::shared_ptr<HttpServer::State> server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> head_parser_;
  std::optional<http::request_parser<VectorBody>> body_parser_;
  std::optional<http::response<VectorBody>> response_;
  std::unique_ptr<std::array<char, 16384>> scratch_;
  Request request_;
  const Route* route_ = nullptr;
  std::string remote_;
  uint64_t registry_id_ = 0;
  size_t drain_budget_ = 0;
  uint64_t held_bytes_ = 0;  // Counted in server_->budget for the current request.
  StateKind state_ = StateKind::kReadingHead;
  bool keep_alive_ = true;
  bool body_pending_ = false;
  bool close_after_write_ = false;
  bool stopping_ = false;
};

void SessionSink::Deliver(Response response) {
  if (responded_.exchange(true)) return;
  HttpSession* session = session_.get();
  asio::post(session->executor(),
             [s = session_, r = std::move(response)]() mutable { s->WriteResponse(std::move(r)); });
}

}  // namespace

namespace {

// Accepts connections on its own strand; each accepted socket gets a fresh strand.
class Listener final : public std::enable_shared_from_this<Listener> {
 public:
  Listener(asio::io_context& ioc, std::shared_ptr<HttpServer::State> server)
      : ioc_(ioc), server_(std::move(server)) {}

  void DoAccept() {
    server_->acceptor->async_accept(
        asio::make_strand(ioc_),
        asio::bind_executor(*server_->acceptor_strand,
                            [self = shared_from_this()](beast_error ec, tcp::socket socket) {
                              self->OnAccept(ec, std::move(socket));
                            }));
  }

 private:
  void OnAccept(beast_error ec, tcp::socket socket) {
    if (server_->stopping.load() || !server_->acceptor->is_open()) return;
    if (!ec) {
      server_->accepted.fetch_add(1);
      // Without it, the last small segment of an answer (WebSocket frames are written in pieces)
      // waits for the client's delayed ACK: ~40 ms per answer, measured by bench/server.
      beast_error ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      std::make_shared<HttpSession>(std::move(socket), server_)->Start();
    } else if (ec == asio::error::operation_aborted) {
      return;
    } else {
      spdlog::warn("net: accept failed: {}", ec.message());
    }
    DoAccept();
  }

  asio::io_context& ioc_;
  std::shared_ptr<HttpServer::State> server_;
};

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, IoContext* io)
    : owned_io_(io == nullptr ? std::make_unique<IoContext>(options.threads) : nullptr),
      io_(io == nullptr ? owned_io_.get() : io),
      state_(std::make_shared<State>()) {
  state_->options = std::move(options);
  if (state_->options.max_held_request_bytes > 0) {
    state_->budget = std::make_shared<ByteBudget>(state_->options.max_held_request_bytes);
  }
}

HttpServer::~HttpServer() { Stop(std::chrono::milliseconds(0)); }

void HttpServer::Handle(std::string method, std::string pattern, Handler handler,
                        HeadCheck pre_body) {
  Route r;
  r.method = std::move(method);
  r.segments = SplitPath(pattern);
  r.handler = std::move(handler);
  r.check = std::move(pre_body);
  state_->routes.push_back(std::move(r));
}

void HttpServer::HandleWebSocket(std::string pattern, WsHandlers handlers, HeadCheck pre_upgrade) {
  Route r;
  r.segments = SplitPath(pattern);
  r.websocket = true;
  r.ws_handlers = std::move(handlers);
  r.check = std::move(pre_upgrade);
  state_->routes.push_back(std::move(r));
}

Status HttpServer::Start() {
  if (state_->started) return InternalError("HttpServer::Start called twice");
  const auto& o = state_->options;
  std::string host = o.host == "localhost" ? "127.0.0.1" : (o.host.empty() ? "0.0.0.0" : o.host);
  beast_error ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgumentError("listen host '" + o.host + "' is not an IP address");
  tcp::endpoint endpoint(address, o.port);
  auto& ioc = io_->context();
  state_->acceptor_strand.emplace(asio::make_strand(ioc));
  state_->acceptor = std::make_unique<tcp::acceptor>(*state_->acceptor_strand);
  auto& acceptor = *state_->acceptor;
  std::string where = host + ":" + std::to_string(o.port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return UnavailableError("cannot listen on " + where + ": " + ec.message());
  state_->port = acceptor.local_endpoint(ec).port();
  state_->started = true;
  auto listener = std::make_shared<Listener>(ioc, state_);
  asio::dispatch(*state_->acceptor_strand, [listener] { listener->DoAccept(); });
  return Status::Ok();
}

uint16_t HttpServer::port() const { return state_->port; }

uint64_t HttpServer::accepted_connections() const { return state_->accepted.load(); }

size_t HttpServer::open_connections() const { return state_->registry.size(); }

uint64_t HttpServer::held_request_bytes() const {
  return state_->budget ? state_->budget->held() : 0;
}

size_t HttpServer::requests_waiting() const {
  return state_->budget ? state_->budget->waiting() : 0;
}

void HttpServer::Stop(std::chrono::milliseconds deadline) {
  if (state_->stopped) return;
  state_->stopped = true;
  state_->stopping = true;
  if (state_->started) {
    std::promise<void> closed;
    asio::dispatch(*state_->acceptor_strand, [this, &closed] {
      beast_error ignored;
      state_->acceptor->close(ignored);
      closed.set_value();
    });
    closed.get_future().wait();
    auto until = std::chrono::steady_clock::now() + deadline;
    for (auto& session : state_->registry.Snapshot()) session->Shutdown(/*force=*/false);
    if (!state_->registry.WaitEmpty(until)) {
      for (auto& session : state_->registry.Snapshot()) session->Shutdown(/*force=*/true);
      // Closed sockets complete their pending operations promptly; a session that a handler keeps
      // alive through its Responder may linger, and is left to the handler.
      state_->registry.WaitEmpty(std::chrono::steady_clock::now() + std::chrono::seconds(2));
    }
  }
  if (owned_io_) owned_io_->Stop();
}

}  // namespace dmoe::net
