// HttpServer: listener and HTTP session, after Beast's session pattern (STYLE.md): each connection
// gets a strand at accept, the session lives while a handler bound with shared_from_this() is
// pending, every read and write has a timeout, and there is one outstanding write per connection.
//
// A request is read in two steps: the header with an empty-body parser (so limits, routing and the
// route's pre_body check run before any body byte is read), then the body. A body with a
// Content-Length is read straight from the socket into its final vector (the fast path, ~memcpy
// speed); a chunked body goes through a parser with VectorBody.
//
// A streamed answer (Responder::Stream) hands its pieces to the strand through a StreamQueue; the
// strand writes what has queued as one chunk per write, with a read on the socket pending meanwhile
// so that a client that goes away ends the stream.
#include "net/http_server.h"

#include "net/beast_internal.h"
#include "net/buffer_pool.h"
#include "net/stream_queue.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstdio>
#include <future>
#include <sstream>

namespace dmoe::net {

using namespace internal;  // NOLINT: the Beast aliases of this file's private half.

namespace {

struct Route {
  std::string method;  // Empty for a WebSocket route.
  std::string pattern;
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
  explicit State(HttpServerOptions o) : options(std::move(o)), pool(options.buffer_pool) {}

  HttpServerOptions options;
  LentOrOwnedPool pool;
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
  std::atomic<uint64_t> refused_connections{0};
  // Shared with WebSocket sessions, which may outlive the server's state.
  std::shared_ptr<std::atomic<uint64_t>> slow_clients_cut =
      std::make_shared<std::atomic<uint64_t>>(0);
  std::atomic<uint64_t> accept_backoffs{0};
  // Bytes queued on streamed answers, shared with their queues, which may outlive the server.
  std::shared_ptr<std::atomic<uint64_t>> stream_queued_bytes =
      std::make_shared<std::atomic<uint64_t>>(0);

  // Open connections, in all and per remote address (max_connections, max_connections_per_ip).
  std::mutex slots_mu;
  size_t connections = 0;
  std::unordered_map<std::string, size_t> per_ip;

  // A connection's place under the caps; given back when the connection closes.
  struct Slot {
    std::shared_ptr<State> state;
    std::string ip;
    ~Slot() {
      std::lock_guard<std::mutex> lock(state->slots_mu);
      --state->connections;
      auto it = state->per_ip.find(ip);
      if (it != state->per_ip.end() && --it->second == 0) state->per_ip.erase(it);
    }
  };
  // Null (and why, in `why`) when the connection is past a cap.
  static std::shared_ptr<Slot> TakeSlot(const std::shared_ptr<State>& self, const std::string& ip,
                                        std::string* why) {
    const HttpServerOptions& o = self->options;
    std::lock_guard<std::mutex> lock(self->slots_mu);
    if (o.max_connections > 0 && self->connections >= o.max_connections) {
      *why =
          "the server has its limit of " + std::to_string(o.max_connections) + " connections open";
      return nullptr;
    }
    size_t& mine = self->per_ip[ip];
    if (o.max_connections_per_ip > 0 && mine >= o.max_connections_per_ip) {
      if (mine == 0) self->per_ip.erase(ip);
      *why = "the server has its limit of " + std::to_string(o.max_connections_per_ip) +
             " connections open from " + ip;
      return nullptr;
    }
    ++mine;
    ++self->connections;
    auto slot = std::make_shared<Slot>();
    slot->state = self;
    slot->ip = ip;
    return slot;
  }

  WsOptions ws_options() const {
    WsOptions o;
    o.max_message_bytes = options.max_body_bytes;
    o.max_queued_messages = options.ws_max_queued_messages;
    o.idle_timeout = options.ws_idle_timeout;
    o.handshake_timeout = options.read_timeout;
    o.buffer_pool = &pool.get();
    o.budget = budget;
    o.max_queued_bytes = options.ws_max_queued_bytes;
    o.write_timeout = options.write_timeout;
    o.min_upload_bytes_per_second = options.min_upload_bytes_per_second;
    o.min_upload_grace = options.min_upload_grace;
    o.message_timeout = options.read_timeout;
    o.slow_clients_cut = slow_clients_cut;
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
  std::shared_ptr<ResponseStream> BeginStream(int status, std::string content_type,
                                              Headers headers) override;

 private:
  std::shared_ptr<HttpSession> session_;
  std::atomic<bool> responded_{false};
};

class HttpSession final : public Closeable, public std::enable_shared_from_this<HttpSession> {
 public:
  // `slot` is the connection's place under the caps; null for one past them, which is answered
  // 503 and closed.
  HttpSession(tcp::socket&& socket, std::shared_ptr<HttpServer::State> server,
              std::shared_ptr<HttpServer::State::Slot> slot, std::string refusal)
      : stream_(std::move(socket)),
        body_timer_(stream_.get_executor()),
        server_(std::move(server)),
        slot_(std::move(slot)),
        refusal_(std::move(refusal)) {}

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
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->slot_) {
        // Answered before its request is read (allowed by HTTP/1.1); Drain then reads and drops it.
        self->keep_alive_ = false;
        return self->Write(Response::Error(UnavailableError(self->refusal_ + "; retry later")),
                           /*close=*/true);
      }
      self->DoReadHead();
    });
  }

  void Shutdown(bool force) override {
    asio::post(stream_.get_executor(), [self = shared_from_this(), force] {
      self->stopping_ = true;
      // A connection waiting for a request, or for room to read one, has nothing in flight:
      // close it now.
      if (force || self->state_ == StateKind::kReadingHead ||
          self->state_ == StateKind::kWaitingBudget) {
        return self->CloseSocket();
      }
      if (self->state_ == StateKind::kStreaming) {  // Ends it after what was queued.
        self->stream_queue_->End();
        self->PumpStream();
      }
    });
  }

  auto executor() { return stream_.get_executor(); }

  // Called on the strand by SessionSink.
  void WriteResponse(Response response) {
    if (state_ != StateKind::kHandling) return;
    Write(std::move(response), /*close=*/false);
  }

  // Called by SessionSink from any thread: the handle of a stream whose header is written next on
  // the strand.
  std::shared_ptr<ResponseStream> NewStream(int status, std::string content_type, Headers headers);

  // Called by the stream's handles from any thread.
  void WakeStream() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->PumpStream(); });
  }
  void CutStream() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      if (self->state_ != StateKind::kStreaming) return;
      self->server_->slow_clients_cut->fetch_add(1);
      self->CloseSocket();
    });
  }

 private:
  enum class StateKind {
    kReadingHead,
    kWaitingBudget,
    kReadingBody,
    kHandling,
    kWriting,
    kStreaming,
    kStreamEnding,  // The last chunk is written; the peer watch is being cancelled.
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
    buffer_.max_size(std::numeric_limits<size_t>::max());  // A chunked body may have lowered it.
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
    version_ = header.version();
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
    ws->HoldSlot(std::move(slot_));  // The connection stays counted under the caps.
    ws->Accept(head_parser_->release());
  }

  // A body is read in windows: each is counted in the server's budget (when it has one) and given
  // room in the body's vector before its bytes are read, and grows with what arrived
  // (NextReadStep), so a declared length costs nothing until its bytes come. The body must keep up
  // a minimum rate and arrive within read_timeout (time spent reading; see UploadClock).
  void ReadBody() {
    state_ = StateKind::kReadingBody;
    stream_.expires_never();
    if (server_->budget) order_ = server_->budget->NextOrder();
    clock_.Start(std::chrono::steady_clock::now());
    if (request_.chunked) {
      body_parser_.emplace(std::move(*head_parser_));
      body_parser_->body_limit(options().max_body_bytes);
    } else {
      const uint64_t total = request_.content_length.value_or(0);
      if (total == 0) return Dispatch();
      // Room for the first MiB at most; a larger body grows its vector as it arrives.
      request_.body = server_->pool.get().Take(std::min<uint64_t>(total, kMaxReadStep));
      filled_ = 0;
    }
    watching_ = false;
    ReadMore();
  }

  // Bytes of the body in memory, and what may come on top of them in one read.
  uint64_t BodyInMemory() const {
    if (request_.chunked) return body_parser_->get().body().size() + buffer_.size();
    return filled_;
  }

  void ReadMore() {
    if (request_.chunked) {
      if (body_parser_->is_done()) return OnChunkedBody();
      const uint64_t in_memory = BodyInMemory();
      if (window_ <= in_memory) {
        if (in_memory == 0) return AwaitFirstBytes();
        // What is in buffer_ already counts, plus room for the next read.
        return Reserve(in_memory - window_ + NextReadStep(clock_.bytes(), kChunkedReadBytes));
      }
      Watch();
      // The parser reads into buffer_ only as much as the window has room for.
      buffer_.max_size(buffer_.size() + std::min<uint64_t>(window_ - in_memory, kChunkedReadBytes));
      return http::async_read_some(
          stream_, buffer_, *body_parser_,
          [self = shared_from_this()](beast_error ec, size_t n) { self->OnChunkedRead(ec, n); });
    }
    const uint64_t total = *request_.content_length;
    if (filled_ == total) return OnFixedBody();
    if (filled_ == window_) {
      if (filled_ == 0) {
        // The first window holds what arrived: what followed the header, else what the socket has.
        if (buffer_.size() == 0) return AwaitFirstBytes();
        return Reserve(std::min<uint64_t>(total, std::min<uint64_t>(buffer_.size(), kMaxReadStep)));
      }
      return Reserve(NextReadStep(filled_, total - filled_));
    }
    if (request_.body.size() < window_) {
      if (request_.body.capacity() < window_) {
        request_.body.reserve(
            std::min<uint64_t>(total, std::max<uint64_t>(window_, 2 * request_.body.capacity())));
      }
      request_.body.resize(window_);
    }
    // Whatever followed the header in the read buffer is the start of the body.
    if (buffer_.size() > 0) {
      size_t n = std::min<size_t>(window_ - filled_, buffer_.size());
      asio::buffer_copy(asio::buffer(request_.body.data() + filled_, n), buffer_.data());
      buffer_.consume(n);
      filled_ += n;
      clock_.Add(n);
      return ReadMore();
    }
    Watch();
    // Straight from the socket into the body: tcp_stream's per-operation timeout costs a timer
    // update on every read and measured ~40% slower on 64 MiB bodies; the watch timer checks rate
    // and deadline instead.
    stream_.socket().async_read_some(
        asio::buffer(request_.body.data() + filled_, window_ - filled_),
        [self = shared_from_this()](beast_error ec, size_t n) {
          if (self->state_ != StateKind::kReadingBody) return;  // Closed, or cut as too slow.
          if (ec) return self->CloseSocket();
          self->filled_ += n;
          self->clock_.Add(n);
          self->ReadMore();
        });
  }

  // Waits until body bytes are in the socket, then counts as many as are there (the first window).
  void AwaitFirstBytes() {
    Watch();
    stream_.socket().async_wait(
        tcp::socket::wait_read, [self = shared_from_this()](beast_error ec) {
          if (self->state_ != StateKind::kReadingBody) return;
          beast_error avail_ec;
          uint64_t arrived = ec ? 0 : self->stream_.socket().available(avail_ec);
          if (ec || avail_ec) return self->CloseSocket();
          if (arrived == 0) {
            // Either the peer closed, or a stale wake: the reactor took the socket's readiness
            // from epoll, and the header's read consumed those bytes before this wait was queued.
            // A peek tells the two apart; taking the stale wake for a close cut genuine clients.
            char byte;
            ssize_t n =
                ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
              return self->AwaitFirstBytes();
            }
            if (n <= 0) return self->CloseSocket();  // 0: the peer's FIN; < 0: a failure.
            arrived = 1;  // Came since available() looked: the next window grows from it.
          }
          uint64_t step = std::min<uint64_t>(
              arrived, self->request_.chunked ? kChunkedReadBytes : kMaxReadStep);
          if (!self->request_.chunked) step = std::min(step, *self->request_.content_length);
          self->Reserve(step);
        });
  }

  // Counts `step` more bytes for the body (parking until the budget has room), then reads on.
  void Reserve(uint64_t step) {
    if (!server_->budget) {
      window_ += step;
      return ReadMore();
    }
    auto admitted = [self = shared_from_this(), step] {
      asio::post(self->executor(), [self, step] {
        if (self->state_ != StateKind::kWaitingBudget) {  // Closed while waiting.
          self->server_->budget->Release(step);
          return;
        }
        self->ticket_ = 0;
        self->held_bytes_ += step;
        self->window_ += step;
        self->state_ = StateKind::kReadingBody;
        self->clock_.Resume(std::chrono::steady_clock::now());
        self->ReadMore();
      });
    };
    if (server_->budget->Acquire(step, held_bytes_, order_, std::move(admitted), &ticket_)) {
      held_bytes_ += step;
      window_ += step;
      return ReadMore();
    }
    state_ = StateKind::kWaitingBudget;
    clock_.Pause(std::chrono::steady_clock::now());
  }

  // Looks at the body's rate and age every kUploadCheckPeriod while it is being read.
  void Watch() {
    if (watching_) return;
    watching_ = true;
    body_timer_.expires_after(kUploadCheckPeriod);
    body_timer_.async_wait([self = shared_from_this()](beast_error ec) {
      self->watching_ = false;
      if (ec) return;
      if (self->state_ == StateKind::kWaitingBudget) return self->Watch();
      if (self->state_ != StateKind::kReadingBody) return;
      std::string slow = self->clock_.Check(
          std::chrono::steady_clock::now(), self->options().min_upload_bytes_per_second,
          self->options().min_upload_grace, self->options().read_timeout);
      if (slow.empty()) return self->Watch();
      self->CutSlowBody(slow);
    });
  }

  void CutSlowBody(const std::string& why) {
    server_->slow_clients_cut->fetch_add(1);
    beast_error ignored;
    stream_.socket().cancel(ignored);  // The pending read completes aborted and is ignored.
    Write(Response::Error(DeadlineExceededError("request body " + why)), /*close=*/true);
  }

  void OnFixedBody() {
    body_timer_.cancel();
    Dispatch();
  }

  void OnChunkedRead(beast_error ec, size_t n) {
    if (state_ != StateKind::kReadingBody) return;
    clock_.Add(n);
    if (ec == http::error::body_limit) {
      body_timer_.cancel();
      return Write(Response::Error(
                       PayloadTooLargeError("chunked request body exceeds the limit of " +
                                            std::to_string(options().max_body_bytes) + " bytes")),
                   /*close=*/true);
    }
    if (ec) {
      body_timer_.cancel();
      if (IsConnectionClosed(ec) || ec == asio::error::operation_aborted) return CloseSocket();
      return Write(Response::Error(InvalidArgumentError("malformed HTTP body: " + ec.message())),
                   /*close=*/true);
    }
    ReadMore();
  }

  void OnChunkedBody() {
    body_timer_.cancel();
    request_.body = std::move(body_parser_->get().body());
    body_parser_.reset();
    // Only the body stays counted, not the room its reads had.
    if (held_bytes_ > request_.body.size()) {
      server_->budget->Release(held_bytes_ - request_.body.size());
      held_bytes_ = request_.body.size();
    }
    Dispatch();
  }

  void Dispatch() {
    state_ = StateKind::kHandling;
    body_pending_ = false;
    window_ = 0;
    stream_.expires_never();
    Responder respond(std::make_shared<SessionSink>(shared_from_this()));
    const Route* route = route_;
    std::string path = request_.path;
    try {
      route->handler(std::move(request_), respond);
    } catch (const std::exception& e) {
      spdlog::error("net: handler for {} {} threw: {}", route->method, path, e.what());
      respond(Response::Error(InternalError("the handler failed")));  // Unless it answered.
    }
  }

  // The header of a streamed answer goes out at once; the body follows as the queue fills.
  void StartStream(int status, std::string content_type, Headers headers,
                   std::shared_ptr<StreamQueue> queue) {
    if (state_ != StateKind::kHandling) return queue->Cut();
    state_ = StateKind::kStreaming;
    stream_queue_ = std::move(queue);
    if (stopping_) stream_queue_->End();
    stream_chunked_ = version_ >= 11;  // HTTP/1.0 has no chunks: the close ends the body.
    http::response<http::empty_body> head(static_cast<http::status>(status), version_);
    for (auto& [k, v] : headers.fields()) head.set(k, v);
    head.set(http::field::server, options().server_name);
    if (!content_type.empty()) head.set(http::field::content_type, content_type);
    if (stream_chunked_) head.chunked(true);
    head.keep_alive(false);
    std::ostringstream out;
    out << head.base();
    stream_prefix_ = out.str();
    ReleaseHeld();  // The request is answered.
    WatchPeer();
    PumpStream();
  }

  // Writes what the queue holds (and the header, the first time), one write at a time.
  void PumpStream() {
    if (state_ != StateKind::kStreaming || stream_writing_) return;
    stream_piece_.clear();
    stream_last_ = stream_queue_->Take(&stream_piece_);
    if (stream_piece_.empty() && !stream_last_ && stream_prefix_.empty()) return;
    stream_suffix_.clear();
    if (stream_chunked_ && !stream_piece_.empty()) {
      char size[24];
      std::snprintf(size, sizeof(size), "%zx\r\n", stream_piece_.size());
      stream_prefix_ += size;
      stream_suffix_ = "\r\n";
    }
    if (stream_chunked_ && stream_last_) stream_suffix_ += "0\r\n\r\n";
    stream_writing_ = true;
    stream_.expires_after(options().write_timeout);
    std::array<asio::const_buffer, 3> buffers{
        asio::buffer(stream_prefix_), asio::buffer(stream_piece_), asio::buffer(stream_suffix_)};
    asio::async_write(stream_, buffers, [self = shared_from_this()](beast_error ec, size_t) {
      self->OnStreamWrite(ec);
    });
  }

  void OnStreamWrite(beast_error ec) {
    stream_writing_ = false;
    stream_queue_->Written(stream_piece_.size());
    stream_prefix_.clear();
    if (ec == beast::error::timeout) server_->slow_clients_cut->fetch_add(1);
    if (state_ != StateKind::kStreaming) return;
    if (ec) return CloseSocket();
    if (!stream_last_) return PumpStream();
    // The peer watch's read completes aborted and drains from there: one read at a time.
    state_ = StateKind::kStreamEnding;
    beast_error ignored;
    stream_.socket().cancel(ignored);
  }

  // While a stream is written, a read waits on the socket: the client sends nothing more on a
  // connection that closes after this answer, so its end (or an error) means it went away.
  void WatchPeer() {
    if (!scratch_) scratch_ = std::make_unique<std::array<char, 16384>>();
    stream_.socket().async_read_some(asio::buffer(*scratch_),
                                     [self = shared_from_this()](beast_error ec, size_t) {
                                       if (self->state_ == StateKind::kStreamEnding) {
                                         return self->Drain();
                                       }
                                       if (self->state_ != StateKind::kStreaming) return;
                                       if (ec) return self->CloseSocket();
                                       self->WatchPeer();  // Ignored, as after any last answer.
                                     });
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
    server_->pool.get().Give(std::move(response_->body()));
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
    if (ticket_ != 0) {
      // Admitted meanwhile: the posted callback sees the session gone and gives the step back.
      server_->budget->Cancel(ticket_);
      ticket_ = 0;
    }
    if (held_bytes_ == 0) return;
    server_->budget->Release(held_bytes_);
    held_bytes_ = 0;
  }

  void CloseSocket() {
    ReleaseHeld();
    if (stream_queue_) stream_queue_->Cut();
    slot_.reset();
    if (watching_) body_timer_.cancel();
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
  std::shared_ptr<HttpServer::State::Slot> slot_;
  std::string refusal_;  // Why a connection without a slot is refused.
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> head_parser_;
  std::optional<http::request_parser<VectorBody>> body_parser_;
  std::optional<http::response<VectorBody>> response_;
  // A streamed answer (state kStreaming on): its queue, and the write in flight as three buffers.
  std::shared_ptr<StreamQueue> stream_queue_;
  std::string stream_prefix_;  // The header (first write), then the chunk's size line.
  std::string stream_piece_;   // The pieces taken from the queue.
  std::string stream_suffix_;  // The chunk's end, and the last chunk after the final piece.
  bool stream_writing_ = false;
  bool stream_last_ = false;  // The write in flight ends the body.
  bool stream_chunked_ = true;
  unsigned version_ = 11;  // The request's HTTP version: 10 or 11.
  std::unique_ptr<std::array<char, 16384>> scratch_;
  Request request_;
  const Route* route_ = nullptr;
  std::string remote_;
  uint64_t registry_id_ = 0;
  size_t drain_budget_ = 0;
  uint64_t held_bytes_ = 0;  // Counted in server_->budget for the current request.
  uint64_t window_ = 0;      // Bytes of the current body allowed in memory (held, with a budget).
  uint64_t filled_ = 0;      // Bytes of a Content-Length body read into request_.body.
  uint64_t order_ = 0;       // The request's place in the budget's line.
  uint64_t ticket_ = 0;      // Non-zero while parked in the budget.
  UploadClock clock_;
  bool watching_ = false;  // body_timer_ is armed.
  // A chunked body is read through buffer_ this much at a time.
  static constexpr uint64_t kChunkedReadBytes = 64 << 10;
  StateKind state_ = StateKind::kReadingHead;
  bool keep_alive_ = true;
  bool body_pending_ = false;
  bool close_after_write_ = false;
  bool stopping_ = false;
};

// A handle on a streamed answer; see ResponseStream. The session lives while a handle does, so
// that pieces written later still have a connection to go to (or find it closed).
class SessionStream final : public ResponseStream {
 public:
  SessionStream(std::shared_ptr<HttpSession> session, std::shared_ptr<StreamQueue> queue)
      : session_(std::move(session)), queue_(std::move(queue)) {}
  ~SessionStream() override { End(); }

  bool Write(std::string_view data) override {
    switch (queue_->Write(data)) {
      case StreamQueue::Push::kQueued:
        return true;
      case StreamQueue::Push::kWake:
        session_->WakeStream();
        return true;
      case StreamQueue::Push::kOverLimit:
        session_->CutStream();
        return false;
      case StreamQueue::Push::kRefused:
        break;
    }
    return false;
  }
  void End() override {
    if (queue_->End()) session_->WakeStream();
  }
  bool closed() const override { return queue_->closed(); }

 private:
  std::shared_ptr<HttpSession> session_;
  std::shared_ptr<StreamQueue> queue_;
};

std::shared_ptr<ResponseStream> HttpSession::NewStream(int status, std::string content_type,
                                                       Headers headers) {
  auto queue = std::make_shared<StreamQueue>(options().max_stream_queued_bytes,
                                             server_->stream_queued_bytes);
  asio::post(stream_.get_executor(),
             [self = shared_from_this(), status, ct = std::move(content_type),
              h = std::move(headers), queue]() mutable {
               self->StartStream(status, std::move(ct), std::move(h), std::move(queue));
             });
  return std::make_shared<SessionStream>(shared_from_this(), std::move(queue));
}

std::shared_ptr<ResponseStream> SessionSink::BeginStream(int status, std::string content_type,
                                                         Headers headers) {
  responded_.store(true);  // The Responder calls this at most once, and never after Deliver.
  return session_->NewStream(status, std::move(content_type), std::move(headers));
}

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
      : ioc_(ioc), server_(std::move(server)), backoff_timer_(*server_->acceptor_strand) {}

  void DoAccept() {
    if (server_->stopping.load() || !server_->acceptor->is_open()) return;
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
    if (ec == asio::error::operation_aborted) return;
    if (ec) return BackOff(ec);
    if (backoff_.count() > 0) {
      spdlog::info("net: accepting connections again");
      backoff_ = std::chrono::milliseconds(0);
    }
    server_->accepted.fetch_add(1);
    // Without it, the last small segment of an answer (WebSocket frames are written in pieces)
    // waits for the client's delayed ACK: ~40 ms per answer, measured by bench/server.
    beast_error ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto remote = socket.remote_endpoint(ignored);
    std::string why;
    auto slot = HttpServer::State::TakeSlot(server_, remote.address().to_string(), &why);
    if (!slot) server_->refused_connections.fetch_add(1);
    std::make_shared<HttpSession>(std::move(socket), server_, std::move(slot), std::move(why))
        ->Start();
    DoAccept();
  }

  // Out of descriptors (EMFILE, ENFILE) or memory, or any other failure: accepting again at once
  // would fail the same way in a busy loop. Waits 50 ms, doubling to 1 s, and logs once per spell.
  void BackOff(const beast_error& ec) {
    if (backoff_.count() == 0) {
      spdlog::warn("net: accept failed: {}; pausing accepts until it succeeds", ec.message());
      backoff_ = std::chrono::milliseconds(50);
    } else {
      backoff_ = std::min<std::chrono::milliseconds>(2 * backoff_, std::chrono::seconds(1));
    }
    server_->accept_backoffs.fetch_add(1);
    backoff_timer_.expires_after(backoff_);
    backoff_timer_.async_wait([self = shared_from_this()](beast_error e) {
      if (!e) self->DoAccept();
    });
  }

  asio::io_context& ioc_;
  std::shared_ptr<HttpServer::State> server_;
  asio::steady_timer backoff_timer_;  // On the acceptor's strand.
  std::chrono::milliseconds backoff_{0};
};

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, IoContext* io)
    : owned_io_(io == nullptr ? std::make_unique<IoContext>(options.threads) : nullptr),
      io_(io == nullptr ? owned_io_.get() : io),
      state_(std::make_shared<State>(std::move(options))) {
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
  r.pattern = std::move(pattern);
  r.handler = std::move(handler);
  r.check = std::move(pre_body);
  state_->routes.push_back(std::move(r));
}

void HttpServer::HandleWebSocket(std::string pattern, WsHandlers handlers, HeadCheck pre_upgrade) {
  Route r;
  r.segments = SplitPath(pattern);
  r.pattern = std::move(pattern);
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
  for (const std::string& route : routes()) spdlog::debug("net: serves {}", route);
  return Status::Ok();
}

std::vector<std::string> HttpServer::routes() const {
  std::vector<std::string> out;
  for (const Route& r : state_->routes) {
    out.push_back((r.websocket ? std::string("WEBSOCKET") : r.method) + " " + r.pattern);
  }
  return out;
}

uint16_t HttpServer::port() const { return state_->port; }

uint64_t HttpServer::accepted_connections() const { return state_->accepted.load(); }

size_t HttpServer::open_connections() const { return state_->registry.size(); }

uint64_t HttpServer::held_request_bytes() const {
  return state_->budget ? state_->budget->held() : 0;
}

uint64_t HttpServer::refused_connections() const { return state_->refused_connections.load(); }

uint64_t HttpServer::slow_clients_cut() const { return state_->slow_clients_cut->load(); }

uint64_t HttpServer::accept_backoffs() const { return state_->accept_backoffs.load(); }

uint64_t HttpServer::stream_queued_bytes() const { return state_->stream_queued_bytes->load(); }

BufferPool& HttpServer::buffer_pool() const { return state_->pool.get(); }

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
      state_->acceptor->close(ignored);  // A backoff timer that fires later finds it closed.
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
