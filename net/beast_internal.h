// Private to net: the Beast and Asio pieces shared by the server, the client and WebSocket
// sessions. Only net/*.cc include this; it is the one place Beast headers enter the build.
#ifndef DMOE_NET_BEAST_INTERNAL_H_
#define DMOE_NET_BEAST_INTERNAL_H_

#include <utility>  // Before Asio/Beast: Boost 1.74 with C++20 needs it.

#include <algorithm>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
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
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "net/buffer_pool.h"
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

// The pool a server or client was lent (its options' buffer_pool), or a private one when it was
// lent none. Lives in the server's or client's shared state, so that its connections can use it.
class LentOrOwnedPool {
 public:
  explicit LentOrOwnedPool(BufferPool* lent)
      : owned_(lent == nullptr ? std::make_unique<BufferPool>() : nullptr),
        pool_(lent == nullptr ? owned_.get() : lent) {}
  BufferPool& get() const { return *pool_; }

 private:
  std::unique_ptr<BufferPool> owned_;
  BufferPool* pool_;
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
// Only bytes that arrived (or the small window a read is about to fill) are counted: a request
// grows its share in steps as its bytes come in, so a client that declares a large body and sends
// nothing holds almost nothing. Thread-safe. A waiter's callback runs once, from the thread whose
// Release (or Acquire) made room, or never if the wait is cancelled; callbacks must only post to
// their session's strand.
class ByteBudget {
 public:
  explicit ByteBudget(uint64_t limit) : limit_(limit) {}

  // A request's place in line (smaller = older); taken once per request, before its first Acquire.
  uint64_t NextOrder();
  // Counts `bytes` more for the request `order`, which holds `holding` bytes already (0 for a new
  // request). True when they fit now: they do when nothing is held (a request larger than the
  // whole budget still gets in, alone) or when held + bytes is within the limit and nobody waits
  // before it. Otherwise returns false, sets `*ticket` (for Cancel) and calls `ready` once they
  // have been counted. A request that holds bytes and waits for more goes before new requests; when
  // all held bytes belong to such waiting requests (none of them can finish), the oldest is let in
  // past the limit, so requests that grow in steps never deadlock each other.
  bool Acquire(uint64_t bytes, uint64_t holding, uint64_t order, std::function<void()> ready,
               uint64_t* ticket);
  // Withdraws a wait. True when it was still waiting (its callback will not run); false when it was
  // admitted already (its callback runs or ran, and the bytes are counted).
  bool Cancel(uint64_t ticket);
  // Counts bytes that are in memory already.
  void Charge(uint64_t bytes);
  // Uncounts bytes and wakes the waiters that now fit.
  void Release(uint64_t bytes);
  uint64_t held() const;
  size_t waiting() const;
  uint64_t limit() const { return limit_; }

 private:
  struct Waiter {
    uint64_t bytes;
    uint64_t holding;
    uint64_t order;
    std::function<void()> ready;
  };
  bool FitsLocked(uint64_t bytes) const { return held_ == 0 || held_ + bytes <= limit_; }
  // Admits what fits now (into `admitted`), growing requests first, then new ones in turn.
  void PumpLocked(std::vector<std::function<void()>>* admitted);
  void AdmitLocked(std::map<uint64_t, Waiter>::iterator it,
                   std::vector<std::function<void()>>* admitted);

  const uint64_t limit_;
  mutable std::mutex mu_;
  uint64_t held_ = 0;
  uint64_t parked_ = 0;  // Bytes held by waiting requests that hold some already.
  size_t growers_ = 0;   // Waiting requests that hold some already.
  uint64_t next_order_ = 1;
  uint64_t next_ticket_ = 1;
  std::map<uint64_t, Waiter> waiters_;  // By ticket: arrival order.
};

// When a body or a partial WebSocket message is too slow (HttpServerOptions::
// min_upload_bytes_per_second and read_timeout). Counts only time spent reading: time parked
// waiting for room in the budget is the server's doing, not the client's.
class UploadClock {
 public:
  void Start(std::chrono::steady_clock::time_point now) {
    active_ = std::chrono::steady_clock::duration::zero();
    since_ = now;
    running_ = true;
    bytes_ = 0;
  }
  void Pause(std::chrono::steady_clock::time_point now) {
    if (running_) active_ += now - since_;
    running_ = false;
  }
  void Resume(std::chrono::steady_clock::time_point now) {
    if (!running_) since_ = now;
    running_ = true;
  }
  void Add(uint64_t bytes) { bytes_ += bytes; }
  uint64_t bytes() const { return bytes_; }
  std::chrono::steady_clock::duration active(std::chrono::steady_clock::time_point now) const {
    return active_ + (running_ ? now - since_ : std::chrono::steady_clock::duration::zero());
  }
  // Empty while the upload is fast enough and within its deadline; else why it is not.
  std::string Check(std::chrono::steady_clock::time_point now, uint64_t min_bytes_per_second,
                    std::chrono::milliseconds grace, std::chrono::milliseconds deadline) const;

 private:
  std::chrono::steady_clock::duration active_{};
  std::chrono::steady_clock::time_point since_{};
  bool running_ = false;
  uint64_t bytes_ = 0;
};

// How often a slow upload is looked at.
inline constexpr std::chrono::milliseconds kUploadCheckPeriod{250};
// A body or message is read into windows of memory counted in the budget before their bytes are
// read. The first holds what arrived already; each next one is as large as what arrived so far
// (at least kMinReadStep, at most kMaxReadStep), so a sender must send to be trusted with more and
// a request holds at most about twice its arrived bytes.
inline constexpr uint64_t kMinReadStep = 4 << 10;
inline constexpr uint64_t kMaxReadStep = 1 << 20;
inline uint64_t NextReadStep(uint64_t received, uint64_t remaining) {
  return std::min(remaining, std::clamp<uint64_t>(received, kMinReadStep, kMaxReadStep));
}

struct WsOptions {
  uint64_t max_message_bytes = 64ull << 20;
  size_t max_queued_messages = 1024;
  std::chrono::milliseconds idle_timeout{300'000};
  std::chrono::milliseconds handshake_timeout{30'000};
  // Where messages are read into and written ones given back; never null, and it outlives the
  // session (the server's or client's shared state holds it).
  BufferPool* buffer_pool = nullptr;
  // Server side, when the server has a request budget: each message is counted from its arrival
  // until on_message returns or, for a request begun with TryBeginRequest during on_message, until
  // its EndRequest; the next message is not read while the budget is full.
  std::shared_ptr<ByteBudget> budget;
  // Server side (0 = off): answers queued beyond these pause reading (HttpServerOptions::
  // ws_max_queued_bytes); a write that takes longer than write_timeout, or the rest of a message
  // that is slower than the minimum rate or takes longer than message_timeout, closes the
  // connection, counted in slow_clients_cut when given.
  uint64_t max_queued_bytes = 0;
  std::chrono::milliseconds write_timeout{0};
  uint64_t min_upload_bytes_per_second = 0;
  std::chrono::milliseconds min_upload_grace{0};
  std::chrono::milliseconds message_timeout{0};
  std::shared_ptr<std::atomic<uint64_t>> slow_clients_cut;
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
  // Keeps `slot` (a connection's place under the server's caps) until the connection ends.
  void HoldSlot(std::shared_ptr<void> slot) { slot_ = std::move(slot); }

 protected:
  void OnRequestBegun() override;
  void OnRequestEnded() override;

 private:
  void Register();
  void Unregister();
  void Opened();
  void ConfigureStream();  // Timeouts, limits and framing, for both ends.
  // Reads the start of the next message, then ReadRest; waits first while too many answers are
  // queued (ReadPaused).
  void DoRead();
  bool ReadPaused() const;
  // Reads the rest of the current message into read_into_, a window at a time (Reserve).
  void ReadRest();
  // With a budget: counts `step` more bytes for the message, parking until it has room.
  void Reserve(uint64_t step);
  void OnRead(beast_error ec, size_t bytes);
  // Looks every kUploadCheckPeriod at a partial message's rate and age and at a write's age.
  void Watch();
  void OnWatch();
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
  uint64_t reserved_ = 0;      // Strand only: counted in the budget for the message read now.
  uint64_t order_ = 0;         // Strand only: the message's place in the budget's line.
  uint64_t ticket_ = 0;        // Strand only: non-zero while parked.
  UploadClock clock_;          // Strand only: the rest of the message being read.
  bool reading_rest_ = false;  // Strand only: a message is partly in.
  bool read_paused_ = false;   // Strand only: no read pending while answers are queued.
  bool watching_ = false;      // Strand only: watch_timer_ armed.
  std::string cut_;            // Strand only: why the connection was cut, if it was.
  std::chrono::steady_clock::time_point write_started_;  // Strand only.
  asio::steady_timer watch_timer_;
  std::atomic<uint64_t> queued_bytes_{0};
  std::shared_ptr<void> slot_;
  uint64_t last_message_bytes_ = 0;  // Strand only: the size of the previous message.
  // The message in on_message, counted in the budget; a request begun meanwhile takes it.
  std::atomic<uint64_t> message_bytes_{0};
  std::mutex held_mu_;
  std::deque<uint64_t> held_;  // Bytes of begun requests, released by EndRequest in turn.
  std::function<void(Result<std::shared_ptr<WsConnection>>)> handshake_done_;
};

}  // namespace dmoe::net::internal

#endif  // DMOE_NET_BEAST_INTERNAL_H_
