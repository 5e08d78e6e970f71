// HttpClient: one Call object per request, running on the strand of the connection it uses. A new
// connection is made on the call's strand; a pooled one brings its own strand, which the call
// adopts, so the call, its deadline timer and its socket are always touched on one strand.
#include "net/http_client.h"

#include "net/beast_internal.h"
#include "net/buffer_pool.h"
#include "net/url.h"

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <future>

namespace dmoe::net {

using namespace internal;  // NOLINT: the Beast aliases of this file's private half.
using Strand = asio::strand<asio::io_context::executor_type>;

namespace {

// Where FetchStream hands the body; null for a call that collects it.
using BodyCallback = std::function<bool(std::string_view piece)>;

// A kept-alive connection. Touched only on `strand` while a call owns it; under the pool's mutex
// while idle.
struct PooledConnection {
  explicit PooledConnection(Strand s) : strand(s), stream(s) {}
  Strand strand;
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  std::chrono::steady_clock::time_point idle_since;
};

}  // namespace

struct HttpClient::State {
  explicit State(asio::io_context& ioc, HttpClientOptions o)
      : ioc(ioc), options(std::move(o)), pool(options.buffer_pool) {}

  // A pooled connection to `key` young enough to reuse, or null.
  std::unique_ptr<PooledConnection> Acquire(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = idle.find(key);
    if (it == idle.end()) return nullptr;
    auto now = std::chrono::steady_clock::now();
    while (!it->second.empty()) {
      auto conn = std::move(it->second.back());
      it->second.pop_back();
      if (now - conn->idle_since < options.max_idle_age) return conn;
    }
    return nullptr;
  }

  void Release(const std::string& key, std::unique_ptr<PooledConnection> conn) {
    conn->idle_since = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mu);
    if (closed) return;
    auto& list = idle[key];
    if (list.size() < options.max_idle_per_host) list.push_back(std::move(conn));
  }

  asio::io_context& ioc;
  HttpClientOptions options;
  LentOrOwnedPool pool;
  Registry calls;
  std::atomic<uint64_t> opened{0};
  std::mutex mu;
  bool closed = false;  // Guarded by mu.
  std::unordered_map<std::string, std::vector<std::unique_ptr<PooledConnection>>> idle;
};

namespace internal {

class CallBase : public Closeable {
 public:
  virtual void Cancel() = 0;
};

}  // namespace internal

namespace {

class Call final : public CallBase, public std::enable_shared_from_this<Call> {
 public:
  Call(std::shared_ptr<HttpClient::State> client, Strand strand, Url url, std::string method,
       Headers headers, Bytes body, Deadline deadline, ResponseCallback callback,
       RequestOptions options, std::unique_ptr<PooledConnection> conn, BodyCallback on_body)
      : client_(std::move(client)),
        strand_(strand),
        url_(std::move(url)),
        key_(url_.HostPort()),
        deadline_(deadline),
        callback_(std::move(callback)),
        on_body_(std::move(on_body)),
        options_(options),
        conn_(std::move(conn)),
        reused_(conn_ != nullptr),
        timer_(strand),
        resolver_(strand) {
    request_.method_string(method);
    request_.target(url_.target);
    request_.version(11);
    for (const auto& [k, v] : headers.fields()) request_.set(k, v);
    request_.set(http::field::host, key_);
    request_.body() = std::move(body);
    request_.keep_alive(true);
    request_.prepare_payload();
    is_head_ = method == "HEAD";
  }

  ~Call() override {
    if (registry_id_ != 0) client_->calls.Remove(registry_id_);
  }

  void Start() {
    registry_id_ = client_->calls.Add(weak_from_this());
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->timer_.expires_at(self->deadline_);
      self->timer_.async_wait([self](beast_error ec) {
        if (ec || self->done_) return;
        self->timed_out_ = true;
        self->AbortIo();
      });
      if (self->conn_) return self->Write();
      self->Connect();
    });
  }

  void Cancel() override {
    asio::post(strand_, [self = shared_from_this()] {
      if (self->done_) return;
      self->cancelled_ = true;
      self->AbortIo();
    });
  }

  void Shutdown(bool) override { Cancel(); }

 private:
  void AbortIo() {
    resolver_.cancel();
    if (conn_) {
      beast_error ignored;
      conn_->stream.socket().close(ignored);
    }
  }

  void Connect() {
    if (done_) return;
    conn_ = std::make_unique<PooledConnection>(strand_);
    client_->opened.fetch_add(1);
    beast_error ec;
    auto address = asio::ip::make_address(url_.host, ec);
    if (!ec) {
      tcp::endpoint endpoint(address, url_.port);
      return conn_->stream.async_connect(
          endpoint, [self = shared_from_this()](beast_error ec) { self->OnConnect(ec); });
    }
    resolver_.async_resolve(
        url_.host, std::to_string(url_.port),
        [self = shared_from_this()](beast_error ec, tcp::resolver::results_type results) {
          if (ec) return self->Fail(ec, "resolving " + self->url_.host);
          if (self->done_ || self->timed_out_ || self->cancelled_) {
            return self->Fail(asio::error::operation_aborted, "resolving");
          }
          self->conn_->stream.async_connect(
              results, [self](beast_error ec, const tcp::endpoint&) { self->OnConnect(ec); });
        });
  }

  void OnConnect(beast_error ec) {
    if (ec) return Fail(ec, "connecting to " + key_);
    beast_error ignored;
    conn_->stream.socket().set_option(tcp::no_delay(true), ignored);
    Write();
  }

  void Write() {
    if (done_) return;
    conn_->stream.expires_never();  // The call's timer is the deadline.
    http::async_write(conn_->stream, request_, [self = shared_from_this()](beast_error ec, size_t) {
      if (ec) return self->Fail(ec, "sending to " + self->key_);
      self->ReadHead();
    });
  }

  void ReadHead() {
    head_parser_.emplace();
    head_parser_->header_limit(client_->options.max_header_bytes);
    head_parser_->body_limit(kNoBeastLimit);
    if (is_head_) head_parser_->skip(true);
    http::async_read_header(conn_->stream, conn_->buffer, *head_parser_,
                            [self = shared_from_this()](beast_error ec, size_t) {
                              if (ec) return self->Fail(ec, "reading from " + self->key_);
                              self->OnHead();
                            });
  }

  void OnHead() {
    got_answer_ = true;
    auto& header = head_parser_->get();
    response_.status = static_cast<int>(header.result_int());
    response_.headers = ToHeaders(header);
    if (auto ct = response_.headers.Get("Content-Type")) response_.content_type = std::string(*ct);
    keep_alive_ = header.keep_alive();
    if (head_parser_->is_done()) return Finish();
    // An error answer is read whole, for its PROTOCOL section 3 body.
    if (on_body_ && response_.status < 400) return StreamBody();
    auto length = head_parser_->content_length();
    const uint64_t limit = BodyLimit();
    if (length && *length > limit) {
      keep_alive_ = false;
      return Complete(
          ResourceExhaustedError("response body of " + std::to_string(*length) + " bytes from " +
                                 key_ + " exceeds the client limit of " + std::to_string(limit)));
    }
    if (length && !head_parser_->chunked()) {
      // The fast path: straight from the socket into the final vector.
      size_t total = static_cast<size_t>(*length);
      response_.body = client_->pool.get().Take(total);
      response_.body.resize(total);
      size_t have = std::min(total, conn_->buffer.size());
      asio::buffer_copy(asio::buffer(response_.body.data(), have), conn_->buffer.data());
      conn_->buffer.consume(have);
      if (have == total) return Finish();
      return asio::async_read(conn_->stream.socket(),  // The call timer bounds it.
                              asio::buffer(response_.body.data() + have, total - have),
                              [self = shared_from_this()](beast_error ec, size_t) {
                                if (ec) return self->Fail(ec, "reading from " + self->key_);
                                self->Finish();
                              });
    }
    body_parser_.emplace(std::move(*head_parser_));
    body_parser_->body_limit(limit);
    http::async_read(conn_->stream, conn_->buffer, *body_parser_,
                     [self = shared_from_this()](beast_error ec, size_t) {
                       if (ec) return self->Fail(ec, "reading from " + self->key_);
                       self->response_.body = std::move(self->body_parser_->get().body());
                       self->Finish();
                     });
  }

  // Hands the body to on_body_ as each read brings some of it (chunked, with a length, or ended
  // by the close).
  void StreamBody() {
    const uint64_t limit = BodyLimit();
    auto length = head_parser_->content_length();
    if (length && *length > limit) {
      keep_alive_ = false;
      return Complete(PayloadTooLargeError("response body of " + std::to_string(*length) +
                                           " bytes from " + key_ + " exceeds the client limit of " +
                                           std::to_string(limit)));
    }
    stream_parser_.emplace(std::move(*head_parser_));
    stream_parser_->body_limit(limit);
    piece_.resize(kPieceBytes);
    ReadPiece();
  }

  void ReadPiece() {
    auto& body = stream_parser_->get().body();
    body.data = piece_.data();
    body.size = piece_.size();
    http::async_read_some(
        conn_->stream, conn_->buffer, *stream_parser_,
        [self = shared_from_this()](beast_error ec, size_t) { self->OnPiece(ec); });
  }

  void OnPiece(beast_error ec) {
    if (done_) return;
    if (ec == http::error::need_buffer) ec = {};  // The piece buffer is full: hand it over.
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      return Complete(PayloadTooLargeError("response body from " + key_ +
                                           " passes the client limit of " +
                                           std::to_string(BodyLimit()) + " bytes"));
    }
    if (ec) return Fail(ec, "reading from " + key_);
    const size_t got = piece_.size() - stream_parser_->get().body().size;
    if (got > 0) {
      bool more = false;
      try {
        more = on_body_(std::string_view(piece_.data(), got));
      } catch (const std::exception& e) {
        keep_alive_ = false;
        return Complete(
            InternalError(std::string("the response body callback threw: ") + e.what()));
      }
      if (!more) {  // The caller has what it wanted; the rest is not read.
        keep_alive_ = false;
        return Finish();
      }
    }
    if (stream_parser_->is_done()) return Finish();
    ReadPiece();
  }

  uint64_t BodyLimit() const {
    const uint64_t mine = options_.max_response_body_bytes;
    const uint64_t client = client_->options.max_response_body_bytes;
    return mine > 0 && mine < client ? mine : client;
  }

  void Finish() {
    if (done_) return;
    if (keep_alive_ && !timed_out_ && !cancelled_) {
      client_->Release(key_, std::move(conn_));
    } else if (conn_) {
      beast_error ignored;
      conn_->stream.socket().close(ignored);
    }
    if (response_.status >= 400 && !options_.raw_error_responses) {
      return Complete(StatusFromResponse(response_));
    }
    Complete(std::move(response_));
  }

  void Fail(beast_error ec, const std::string& what) {
    if (done_) return;
    conn_.reset();
    if (timed_out_) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - started_);
      return Complete(DeadlineExceededError("request to http://" + key_ + url_.target +
                                            " passed its deadline (" + std::to_string(ms.count()) +
                                            " ms) while " + what));
    }
    if (cancelled_) return Complete(UnavailableError("request cancelled by the caller"));
    // A pooled connection the server closed while idle: it never saw this request; try a new one.
    if (reused_ && !got_answer_ && IsConnectionClosed(ec)) {
      reused_ = false;
      return Connect();
    }
    Complete(StatusFromError(ec, what));
  }

  void Complete(Result<Response> result) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    resolver_.cancel();
    // No write of the request is in flight once the call completes.
    client_->pool.get().Give(std::move(request_.body()));
    try {
      callback_(std::move(result));
    } catch (const std::exception& e) {
      spdlog::error("net: HTTP client callback threw: {}", e.what());
    }
    callback_ = nullptr;
  }

  std::shared_ptr<HttpClient::State> client_;
  Strand strand_;
  Url url_;
  std::string key_;
  Deadline deadline_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  ResponseCallback callback_;
  BodyCallback on_body_;
  RequestOptions options_;
  std::unique_ptr<PooledConnection> conn_;
  bool reused_;
  asio::steady_timer timer_;
  tcp::resolver resolver_;
  http::request<VectorBody> request_;
  std::optional<http::response_parser<http::empty_body>> head_parser_;
  std::optional<http::response_parser<VectorBody>> body_parser_;
  std::optional<http::response_parser<http::buffer_body>> stream_parser_;
  std::vector<char> piece_;  // What one read of a streamed body brings.
  static constexpr size_t kPieceBytes = 64 << 10;
  Response response_;
  uint64_t registry_id_ = 0;
  bool is_head_ = false;
  bool keep_alive_ = false;
  bool got_answer_ = false;
  bool done_ = false;
  bool timed_out_ = false;
  bool cancelled_ = false;
};

}  // namespace

void CallHandle::Cancel() const {
  if (auto call = call_.lock()) call->Cancel();
}

HttpClient::HttpClient(HttpClientOptions options, IoContext* io)
    : owned_io_(io == nullptr ? std::make_unique<IoContext>(options.threads) : nullptr),
      state_(std::make_shared<State>(io == nullptr ? owned_io_->context() : io->context(),
                                     std::move(options))) {}

HttpClient::~HttpClient() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closed = true;
  }
  for (auto& call : state_->calls.Snapshot()) call->Shutdown(true);
  state_->calls.WaitEmpty(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  if (owned_io_) owned_io_->Stop();
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->idle.clear();
}

namespace {

CallHandle StartCall(const std::shared_ptr<HttpClient::State>& state, std::string method,
                     std::string_view url, Headers headers, Bytes body, Deadline deadline,
                     ResponseCallback callback, RequestOptions options, BodyCallback on_body) {
  Result<Url> parsed = ParseUrl(url);
  if (!parsed.ok()) {
    asio::post(state->ioc, [cb = std::move(callback), s = parsed.status()] { cb(s); });
    return CallHandle();
  }
  auto conn = state->Acquire(parsed->HostPort());
  Strand strand = conn ? conn->strand : asio::make_strand(state->ioc);
  auto call = std::make_shared<Call>(
      state, strand, std::move(*parsed), std::move(method), std::move(headers), std::move(body),
      deadline, std::move(callback), options, std::move(conn), std::move(on_body));
  call->Start();
  return CallHandle(std::weak_ptr<CallBase>(call));
}

// Starts a call with a callback that fulfils the result, and waits for it.
Result<Response> Await(const std::function<void(ResponseCallback)>& start) {
  auto promise = std::make_shared<std::promise<Result<Response>>>();
  auto future = promise->get_future();
  start([promise](Result<Response> r) { promise->set_value(std::move(r)); });
  return future.get();
}

}  // namespace

CallHandle HttpClient::Request(std::string method, std::string_view url, Headers headers,
                               Bytes body, Deadline deadline, ResponseCallback callback,
                               RequestOptions options) {
  return StartCall(state_, std::move(method), url, std::move(headers), std::move(body), deadline,
                   std::move(callback), options, nullptr);
}

Result<Response> HttpClient::Fetch(std::string method, std::string_view url, Headers headers,
                                   Bytes body, std::chrono::milliseconds timeout,
                                   RequestOptions options) {
  return Await([&](ResponseCallback done) {
    Request(std::move(method), url, std::move(headers), std::move(body),
            std::chrono::steady_clock::now() + timeout, std::move(done), options);
  });
}

Result<Response> HttpClient::FetchStream(
    std::string method, std::string_view url, Headers headers, Bytes body,
    std::chrono::milliseconds timeout, const std::function<bool(std::string_view piece)>& on_body) {
  return Await([&](ResponseCallback done) {
    StartCall(state_, std::move(method), url, std::move(headers), std::move(body),
              std::chrono::steady_clock::now() + timeout, std::move(done), RequestOptions{},
              on_body);
  });
}

uint64_t HttpClient::connections_opened() const { return state_->opened.load(); }

BufferPool& HttpClient::buffer_pool() const { return state_->pool.get(); }

Result<Response> Fetch(std::string method, std::string_view url, Headers headers, Bytes body,
                       std::chrono::milliseconds timeout, RequestOptions options) {
  HttpClient client;
  return client.Fetch(std::move(method), url, std::move(headers), std::move(body), timeout,
                      options);
}

Result<Response> FetchStream(std::string method, std::string_view url, Headers headers, Bytes body,
                             std::chrono::milliseconds timeout,
                             const std::function<bool(std::string_view piece)>& on_body) {
  HttpClient client;
  return client.FetchStream(std::move(method), url, std::move(headers), std::move(body), timeout,
                            on_body);
}

}  // namespace dmoe::net
