// Private to net: the Beast and Asio pieces shared by the server, the client and WebSocket
// sessions. Only net/*.cc include this; it is the one place Beast headers enter the build.
#ifndef DMOE_NET_BEAST_INTERNAL_H_
#define DMOE_NET_BEAST_INTERNAL_H_

#include <utility>  // Before Asio/Beast: Boost 1.74 with C++20 needs it.

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "core/status.h"
#include "net/http_message.h"
#include "net/websocket.h"

namespace dmoe::net::internal {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using beast_error = beast::error_code;

// Beast's body_limit(boost::none) is broken in 1.74; this stands for "no limit of its own".
inline constexpr uint64_t kNoBeastLimit = std::numeric_limits<uint64_t>::max();

// A Beast body stored in a Bytes vector. Reading reserves the declared length once and copies
// with memcpy; writing hands the whole vector to the socket as one buffer. Beast's string body
// grows and zero-fills in small steps, which is what made it slow.
struct VectorBody {
  using value_type = Bytes;

  static uint64_t size(const value_type& body) { return body.size(); }

  class reader {
   public:
    template <bool kIsRequest, class Fields>
    reader(http::header<kIsRequest, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<uint64_t>& length, beast_error& ec) {
      ec = {};
      if (length) body_.reserve(static_cast<size_t>(*length));
    }
    template <class ConstBufferSequence>
    size_t put(const ConstBufferSequence& buffers, beast_error& ec) {
      ec = {};
      size_t n = asio::buffer_size(buffers);
      size_t old = body_.size();
      body_.resize(old + n);
      asio::buffer_copy(asio::buffer(body_.data() + old, n), buffers);
      return n;
    }
    void finish(beast_error& ec) { ec = {}; }

   private:
    value_type& body_;
  };

  class writer {
   public:
    using const_buffers_type = asio::const_buffer;
    template <bool kIsRequest, class Fields>
    writer(const http::header<kIsRequest, Fields>&, const value_type& body) : body_(body) {}
    void init(beast_error& ec) { ec = {}; }
    boost::optional<std::pair<const_buffers_type, bool>> get(beast_error& ec) {
      ec = {};
      if (done_ || body_.empty()) return boost::none;
      done_ = true;
      return {{asio::const_buffer(body_.data(), body_.size()), false}};
    }

   private:
    const value_type& body_;
    bool done_ = false;
  };
};

// Something Stop() or a client's destructor can shut down. Called from any thread; implementations
// post to their strand.
class Closeable {
 public:
  virtual ~Closeable() = default;
  // force = false: finish what is in flight, then close; true: close the socket now.
  virtual void Shutdown(bool force) = 0;
};

// The set of live sessions (or calls) of one server or client. Thread-safe.
class Registry {
 public:
  uint64_t Add(std::weak_ptr<Closeable> item);
  void Remove(uint64_t id);
  std::vector<std::shared_ptr<Closeable>> Snapshot();
  size_t size();
  // Waits until empty or `deadline`; true when empty.
  bool WaitEmpty(std::chrono::steady_clock::time_point deadline);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::weak_ptr<Closeable>> items_;
};

// Maps a socket-level failure to Status; `what` says what was being done, for the message.
Status StatusFromError(const beast_error& ec, std::string_view what);
// True for errors that mean "the peer closed or reset the connection".
bool IsConnectionClosed(const beast_error& ec);

// Copies the header fields of a Beast message into Headers.
template <class Fields>
Headers ToHeaders(const Fields& fields) {
  Headers out;
  for (const auto& f : fields) {
    out.Add(std::string(f.name_string()), std::string(f.value()));
  }
  return out;
}

// The bytes of requests one server holds at once (HttpServerOptions::max_held_request_bytes).
// Thread-safe. A waiter's callback runs once, from the thread whose Release made room (or never,
// if no room is made); callbacks must only post to their session's strand.
class ByteBudget {
 public:
  explicit ByteBudget(uint64_t limit) : limit_(limit) {}

  // Counts `bytes` and returns true when they fit, or when nothing is held (a request larger than
  // the whole budget still gets in, alone). Otherwise returns false and calls `ready` once they
  // have been counted, after earlier waiters.
  bool Acquire(uint64_t bytes, std::function<void()> ready);
  // Counts bytes that are in memory already (a chunked body, or the part of a WebSocket message
  // beyond what was reserved for it).
  void Charge(uint64_t bytes);
  // Uncounts bytes and wakes the waiters that now fit.
  void Release(uint64_t bytes);
  uint64_t held() const;
  size_t waiting() const;

 private:
  struct Waiter {
    uint64_t bytes;
    std::function<void()> ready;
  };
  bool FitsLocked(uint64_t bytes) const;

  const uint64_t limit_;
  mutable std::mutex mu_;
  uint64_t held_ = 0;
  std::deque<Waiter> waiters_;
};

struct WsOptions {
  uint64_t max_message_bytes = 64ull << 20;
  size_t max_queued_messages = 1024;
  std::chrono::milliseconds idle_timeout{300'000};
  std::chrono::milliseconds handshake_timeout{30'000};
  // Server side, when the server has a request budget: each message is counted from its arrival
  // until on_message returns or, for a request begun with TryBeginRequest during on_message, until
  // its EndRequest; the next message is not read while the budget is full.
  std::shared_ptr<ByteBudget> budget;
};

// One WebSocket, either end. Runs on the strand of its tcp_stream; see WsConnection for the
// public contract. Registered in `registry` (when given) while alive.
class WsSession final : public WsConnection,
                        public Closeable,
                        public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(beast::tcp_stream&& stream, RequestHead head, WsOptions options, WsHandlers handlers,
            Registry* registry);
  ~WsSession() override;

  // Server side: completes the upgrade of `request`, then reads messages.
  void Accept(http::request<http::empty_body> request);
  // Client side, on a connected stream: sends the upgrade request with head().headers, then reads.
  // `done` runs once on the strand with the connection or why it failed.
  void Handshake(std::string host, std::string target,
                 std::function<void(Result<std::shared_ptr<WsConnection>>)> done);

  Status Send(Bytes message) override;
  void Close() override;
  bool is_open() const override { return open_.load(); }
  void Shutdown(bool force) override;

 protected:
  void OnRequestBegun() override;
  void OnRequestEnded() override;

 private:
  void Register();
  void Unregister();
  void Opened();
  void ConfigureStream();  // Timeouts, limits and framing, for both ends.
  // Reads the start of the next message, then (with a budget: after WaitForBudget) ReadRest.
  void DoRead();
  // Parks until the budget has room for the message being read, then ReadRest.
  void WaitForBudget();
  // Reads the rest of the current message into read_into_.
  void ReadRest();
  void OnRead(beast_error ec, size_t bytes);
  void DoWrite();
  void OnWrite(beast_error ec, size_t bytes);
  void DoClose();
  void Finish(const Status& status);

  websocket::stream<beast::tcp_stream> ws_;
  WsOptions options_;
  WsHandlers handlers_;
  Registry* registry_;
  uint64_t registry_id_ = 0;
  Bytes read_buffer_;
  std::deque<Bytes> queue_;  // Strand only.
  std::atomic<size_t> queued_{0};
  std::atomic<bool> open_{false};
  bool writing_ = false;          // Strand only.
  bool close_requested_ = false;  // Strand only.
  bool closing_ = false;          // Strand only: async_close started.
  bool finished_ = false;         // Strand only: on_close ran.
  bool parked_ = false;           // Strand only: waiting for room in the budget, no read pending.
  using ReadBuffer = asio::dynamic_vector_buffer<uint8_t, std::allocator<uint8_t>>;
  std::shared_ptr<ReadBuffer> read_into_;  // Strand only: read_buffer_ as Beast fills it.
  // Bytes read before the budget is asked whether the rest may come.
  static constexpr size_t kMessageStartBytes = 512;
  static constexpr size_t kWriteChunkBytes = 64 << 10;
  uint64_t reserved_ = 0;            // Strand only: counted in the budget for the message read now.
  uint64_t last_message_bytes_ = 0;  // Strand only: the size of the previous message.
  // The message in on_message, counted in the budget; a request begun meanwhile takes it.
  std::atomic<uint64_t> message_bytes_{0};
  std::mutex held_mu_;
  std::deque<uint64_t> held_;  // Bytes of begun requests, released by EndRequest in turn.
  std::function<void(Result<std::shared_ptr<WsConnection>>)> handshake_done_;
};

}  // namespace dmoe::net::internal

#endif  // DMOE_NET_BEAST_INTERNAL_H_
