// WsClient: connects a tcp_stream (deadline bounded by a timer on the connection's strand), then
// hands the stream to a WsSession for the handshake and the message loop.
#include "net/beast_internal.h"
#include "net/http_client.h"
#include "net/url.h"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>

namespace dmoe::net {

using namespace internal;  // NOLINT: the Beast aliases of this file's private half.
using Strand = asio::strand<asio::io_context::executor_type>;

struct WsClient::State : std::enable_shared_from_this<WsClient::State> {
  State(asio::io_context& ioc, WsClientOptions o)
      : ioc(ioc), options(std::move(o)), pool(options.buffer_pool) {}

  WsOptions ws_options() const {
    WsOptions o;
    o.max_message_bytes = options.max_message_bytes;
    o.max_queued_messages = options.max_queued_messages;
    o.idle_timeout = options.idle_timeout;
    o.buffer_pool = &pool.get();
    return o;
  }

  struct Shared {
    std::weak_ptr<WsConnection> connection;
    std::vector<WsConnectCallback> waiters;
    bool connecting = false;
  };

  asio::io_context& ioc;
  WsClientOptions options;
  LentOrOwnedPool pool;
  Registry sessions;
  std::mutex mu;
  std::map<std::string, Shared> shared;  // Guarded by mu.
};

namespace {

// Resolve + connect + handshake under one deadline. Lives until the callback ran.
class Connector : public std::enable_shared_from_this<Connector> {
 public:
  Connector(std::shared_ptr<WsClient::State> client, Url url, Headers headers, WsHandlers handlers,
            Deadline deadline, WsConnectCallback callback)
      : client_(std::move(client)),
        strand_(asio::make_strand(client_->ioc)),
        url_(std::move(url)),
        headers_(std::move(headers)),
        handlers_(std::move(handlers)),
        deadline_(deadline),
        callback_(std::move(callback)),
        stream_(strand_),
        timer_(strand_),
        resolver_(strand_) {}

  void Start() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->timer_.expires_at(self->deadline_);
      self->timer_.async_wait([self](beast_error ec) {
        if (ec || self->done_) return;
        self->timed_out_ = true;
        self->resolver_.cancel();
        beast_error ignored;
        if (self->session_) {
          self->session_->Shutdown(/*force=*/true);
        } else {
          self->stream_.socket().close(ignored);
        }
      });
      beast_error ec;
      auto address = asio::ip::make_address(self->url_.host, ec);
      if (!ec) {
        return self->stream_.async_connect(tcp::endpoint(address, self->url_.port),
                                           [self](beast_error ec) { self->OnConnect(ec); });
      }
      self->resolver_.async_resolve(
          self->url_.host, std::to_string(self->url_.port),
          [self](beast_error ec, tcp::resolver::results_type results) {
            if (ec || self->timed_out_) return self->Done(self->Error(ec, "resolving"));
            self->stream_.async_connect(
                results, [self](beast_error ec, const tcp::endpoint&) { self->OnConnect(ec); });
          });
    });
  }

 private:
  Status Error(beast_error ec, const std::string& what) {
    if (timed_out_) {
      return DeadlineExceededError("WebSocket connect to " + url_.HostPort() +
                                   " passed its deadline while " + what);
    }
    return StatusFromError(ec, what + " " + url_.HostPort());
  }

  void OnConnect(beast_error ec) {
    if (ec) return Done(Error(ec, "connecting to"));
    beast_error ignored;
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    RequestHead head;
    head.method = "GET";
    head.target = url_.target;
    head.path = url_.target.substr(0, url_.target.find('?'));
    head.headers = headers_;
    session_ = std::make_shared<WsSession>(std::move(stream_), std::move(head),
                                           client_->ws_options(), handlers_, &client_->sessions);
    session_->Handshake(
        url_.HostPort(), url_.target,
        [self = shared_from_this()](Result<std::shared_ptr<WsConnection>> r) {
          if (!r.ok())
            return self->Done(self->timed_out_ ? self->Error({}, "handshaking") : r.status());
          self->Done(std::move(r));
        });
  }

  void Done(Result<std::shared_ptr<WsConnection>> result) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    session_.reset();
    auto cb = std::move(callback_);
    cb(std::move(result));
  }

  std::shared_ptr<WsClient::State> client_;
  Strand strand_;
  Url url_;
  Headers headers_;
  WsHandlers handlers_;
  Deadline deadline_;
  WsConnectCallback callback_;
  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  tcp::resolver resolver_;
  std::shared_ptr<WsSession> session_;
  bool done_ = false;
  bool timed_out_ = false;
};

}  // namespace

WsClient::WsClient(WsClientOptions options, IoContext* io)
    : owned_io_(io == nullptr ? std::make_unique<IoContext>(options.threads) : nullptr),
      state_(std::make_shared<State>(io == nullptr ? owned_io_->context() : io->context(),
                                     std::move(options))) {}

WsClient::~WsClient() {
  for (auto& s : state_->sessions.Snapshot()) s->Shutdown(/*force=*/false);
  if (!state_->sessions.WaitEmpty(std::chrono::steady_clock::now() + std::chrono::seconds(2))) {
    for (auto& s : state_->sessions.Snapshot()) s->Shutdown(/*force=*/true);
    state_->sessions.WaitEmpty(std::chrono::steady_clock::now() + std::chrono::seconds(2));
  }
  if (owned_io_) owned_io_->Stop();
}

void WsClient::Connect(std::string_view url, Headers headers, WsHandlers handlers,
                       Deadline deadline, WsConnectCallback callback) {
  Result<Url> parsed = ParseUrl(url);
  if (parsed.ok() && parsed->scheme != "ws") {
    parsed = InvalidArgumentError("WebSocket URL must start with ws://, got " + std::string(url));
  }
  if (!parsed.ok()) {
    asio::post(state_->ioc, [cb = std::move(callback), s = parsed.status()] { cb(s); });
    return;
  }
  std::make_shared<Connector>(state_, std::move(*parsed), std::move(headers), std::move(handlers),
                              deadline, std::move(callback))
      ->Start();
}

BufferPool& WsClient::buffer_pool() const { return state_->pool.get(); }

void WsClient::GetShared(std::string_view url, Headers headers, WsHandlers handlers,
                         Deadline deadline, WsConnectCallback callback) {
  std::string key(url);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto& entry = state_->shared[key];
    if (auto conn = entry.connection.lock(); conn && conn->is_open()) {
      asio::post(state_->ioc, [cb = std::move(callback), conn] { cb(conn); });
      return;
    }
    entry.waiters.push_back(std::move(callback));
    if (entry.connecting) return;
    entry.connecting = true;
  }
  std::weak_ptr<State> weak = state_;
  Connect(url, std::move(headers), std::move(handlers), deadline,
          [weak, key](Result<std::shared_ptr<WsConnection>> r) {
            auto state = weak.lock();
            if (!state) return;
            std::vector<WsConnectCallback> waiters;
            {
              std::lock_guard<std::mutex> lock(state->mu);
              auto& entry = state->shared[key];
              entry.connecting = false;
              if (r.ok()) entry.connection = *r;
              waiters.swap(entry.waiters);
            }
            for (auto& cb : waiters) cb(r);
          });
}

}  // namespace dmoe::net
