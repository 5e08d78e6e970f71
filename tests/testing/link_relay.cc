#include "tests/testing/link_relay.h"

#include <utility>  // Before Asio: Boost 1.74 with C++20 needs it.

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <charconv>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

namespace dmoe::testing {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

// Bytes waiting per direction (TCP: per connection; UDP: per relay) before the relay stops reading
// (TCP) or drops (UDP).
constexpr size_t kMaxQueuedBytes = 8 << 20;
constexpr size_t kTcpReadSize = 64 << 10;
constexpr size_t kUdpMaxDatagram = 64 << 10;
constexpr size_t kMaxUdpPeers = 1024;
constexpr auto kUdpIdleTimeout = std::chrono::seconds(60);
constexpr auto kUdpSweepPeriod = std::chrono::seconds(5);
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(10);
// Socket buffers requested (the kernel caps them at its maximum), so bursts of datagrams in a test
// are not lost in the relay's own receive buffer.
constexpr int kSocketBufferBytes = 4 << 20;

// "127.x.y.z:PORT" parsed; anything else (names, other addresses, IPv6) is kInvalidArgument.
Result<asio::ip::address_v4> ParseLoopbackHost(const std::string& text, const std::string& what) {
  error_code ec;
  asio::ip::address_v4 address = asio::ip::make_address_v4(text, ec);
  if (ec || (address.to_uint() >> 24) != 127) {
    return InvalidArgumentError(what + " host '" + text +
                                "' is not a loopback IPv4 address (127.0.0.0/8 only)");
  }
  return address;
}

Result<std::pair<asio::ip::address_v4, uint16_t>> ParseLoopback(const std::string& text,
                                                                const std::string& what,
                                                                bool allow_port_zero) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError(what + " '" + text + "' is not HOST:PORT, e.g. 127.0.0.1:7000");
  }
  DMOE_ASSIGN_OR_RETURN(asio::ip::address_v4 address,
                        ParseLoopbackHost(text.substr(0, colon), what));
  std::string port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || err != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535 || (port == 0 && !allow_port_zero)) {
    return InvalidArgumentError(what + " port '" + port_text + "' in '" + text + "' must be " +
                                (allow_port_zero ? "0" : "1") + "..65535");
  }
  return std::make_pair(address, static_cast<uint16_t>(port));
}

bool IsFraction(double x) { return x >= 0 && x <= 1; }  // false for NaN too

Status ValidateOptions(const LinkOptions& o) {
  if (o.delay.count() < 0 || o.jitter.count() < 0 || o.stall_duration.count() < 0) {
    return InvalidArgumentError("delay, jitter and stall_duration must be >= 0, got " +
                                std::to_string(o.delay.count()) + ", " +
                                std::to_string(o.jitter.count()) + ", " +
                                std::to_string(o.stall_duration.count()) + " us");
  }
  if (!IsFraction(o.loss)) {
    return InvalidArgumentError("loss must be in 0..1, got " + std::to_string(o.loss));
  }
  if (!IsFraction(o.tcp_stall_probability)) {
    return InvalidArgumentError("tcp_stall_probability must be in 0..1, got " +
                                std::to_string(o.tcp_stall_probability));
  }
  return Status::Ok();
}

// Time to send `bytes` at `bytes_per_s`.
Clock::duration TransmitTime(size_t bytes, uint64_t bytes_per_s) {
  return std::chrono::nanoseconds(
      static_cast<int64_t>(static_cast<double>(bytes) * 1e9 / static_cast<double>(bytes_per_s)));
}

// Under a bandwidth cap TCP writes go out in slices of ~10 ms of the cap, so pacing is smooth.
size_t PacingSlice(uint64_t bytes_per_s) {
  return static_cast<size_t>(std::clamp<uint64_t>(bytes_per_s / 100, 1024, kTcpReadSize));
}

template <typename Socket>
void SetBuffers(Socket& socket) {
  error_code ec;
  socket.set_option(asio::socket_base::receive_buffer_size(kSocketBufferBytes), ec);
  socket.set_option(asio::socket_base::send_buffer_size(kSocketBufferBytes), ec);
}

// What every part of a relay shares. Options and counters may be read by any thread (under mu_);
// the random generator is used on the relay's thread only.
class LinkState {
 public:
  explicit LinkState(const LinkOptions& options) : options_(options), rng_(options.seed) {}

  LinkOptions options() const {
    std::lock_guard lock(mu_);
    return options_;
  }
  void set_options(const LinkOptions& options) {
    std::lock_guard lock(mu_);
    options_ = options;
  }
  LinkStats stats() const {
    std::lock_guard lock(mu_);
    return stats_;
  }
  template <typename F>
  void Count(F&& update) {
    std::lock_guard lock(mu_);
    update(stats_);
  }
  bool partitioned() const { return partitioned_.load(); }
  void set_partitioned(bool on) { partitioned_.store(on); }

  // delay + uniform jitter, at least 0. Relay thread only.
  Clock::duration SampleDelay(const LinkOptions& o) {
    int64_t us = o.delay.count();
    if (o.jitter.count() > 0) {
      us += std::uniform_int_distribution<int64_t>(-o.jitter.count(), o.jitter.count())(rng_);
    }
    return std::chrono::microseconds(std::max<int64_t>(us, 0));
  }
  // True with probability p. Relay thread only.
  bool Chance(double p) {
    if (p <= 0) return false;
    if (p >= 1) return true;
    return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
  }

 private:
  mutable std::mutex mu_;
  LinkOptions options_;
  LinkStats stats_;
  std::atomic<bool> partitioned_{false};
  std::mt19937_64 rng_;
};

class TcpEngine;

// One accepted connection and its connection to the target. Lives on the relay's thread; kept
// alive by the engine's table and by the handlers it has outstanding.
class TcpConnection : public std::enable_shared_from_this<TcpConnection> {
 public:
  TcpConnection(TcpEngine& engine, tcp::socket client);
  // Reads the client and connects to the target (after the partition, if one is on).
  void Start();
  // Resumes what a partition or an option change held back.
  void Kick();
  // Closes both sockets; what waits is dropped. Idempotent.
  void Close();

 private:
  struct Chunk {
    TimePoint due;
    std::string data;
  };
  // One direction: bytes read from `from` wait in `queue` until due, then are written to `to`.
  // At most one read, one write and one timer wait are outstanding.
  struct Direction {
    Direction(asio::io_context& io, tcp::socket& from_socket, tcp::socket& to_socket, bool target)
        : from(from_socket), to(to_socket), timer(io), to_target(target) {}
    tcp::socket& from;
    tcp::socket& to;
    asio::steady_timer timer;
    bool to_target;
    std::vector<char> buffer = std::vector<char>(kTcpReadSize);
    std::deque<Chunk> queue;
    size_t queued = 0;         // bytes in queue
    size_t front_written = 0;  // bytes of queue.front() already written
    bool reading = false;
    bool writing = false;
    bool waiting = false;   // the timer is armed for the front chunk
    bool eof = false;       // `from` reached EOF or failed: pass a FIN on after the queue
    bool shut = false;      // the FIN was passed on
    TimePoint last_due{};   // delivery times are monotonic, so jitter keeps byte order
    TimePoint link_free{};  // under a bandwidth cap: when the last slice finished "transmitting"
  };

  void Connect();
  void Read(Direction& d);
  void OnRead(Direction& d, const error_code& ec, size_t n);
  void Pump(Direction& d);
  void OnWritten(Direction& d, const error_code& ec, size_t n);
  void CountDelivered(const Direction& d, int64_t bytes);

  TcpEngine& engine_;
  tcp::socket client_;
  tcp::socket upstream_;
  Direction to_target_;
  Direction to_client_;
  bool connecting_ = false;
  bool connected_ = false;
  bool closed_ = false;
};

// The TCP side of a relay: the acceptor and the table of connections. Relay thread only, except
// Open and Start before the thread runs.
class TcpEngine {
 public:
  TcpEngine(asio::io_context& io, LinkState& state, tcp::endpoint target)
      : io_(io), state_(state), target_(std::move(target)), acceptor_(io), retry_(io) {}

  Status Open(const tcp::endpoint& listen) {
    error_code ec;
    acceptor_.open(listen.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(listen, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return UnavailableError("cannot listen on tcp " + listen.address().to_string() + ":" +
                              std::to_string(listen.port()) + ": " + ec.message());
    }
    return Status::Ok();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void Start() { Accept(); }

  void Kick() {
    if (stopping_) return;
    // Copied: a kicked connection may close and leave the table.
    std::vector<std::shared_ptr<TcpConnection>> connections;
    for (auto& [raw, connection] : connections_) connections.push_back(connection);
    for (auto& connection : connections) connection->Kick();
  }

  void Shutdown() {
    stopping_ = true;
    error_code ec;
    acceptor_.close(ec);
    retry_.cancel();
    auto connections = std::move(connections_);
    connections_.clear();
    for (auto& [raw, connection] : connections) connection->Close();
  }

  void Remove(TcpConnection* connection) { connections_.erase(connection); }

  asio::io_context& io() { return io_; }
  LinkState& state() { return state_; }
  const tcp::endpoint& target() const { return target_; }

 private:
  void Accept() {
    acceptor_.async_accept([this](const error_code& ec, tcp::socket socket) {
      if (stopping_) return;
      if (ec) {
        if (ec == asio::error::operation_aborted) return;
        // E.g. out of descriptors: try again shortly rather than spin.
        retry_.expires_after(kAcceptRetryDelay);
        retry_.async_wait([this](const error_code& wait_ec) {
          if (!wait_ec && !stopping_) Accept();
        });
        return;
      }
      auto connection = std::make_shared<TcpConnection>(*this, std::move(socket));
      connections_[connection.get()] = connection;
      state_.Count([](LinkStats& s) {
        ++s.connections_accepted;
        ++s.connections_open;
      });
      connection->Start();
      Accept();
    });
  }

  asio::io_context& io_;
  LinkState& state_;
  tcp::endpoint target_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_;
  bool stopping_ = false;
  std::unordered_map<TcpConnection*, std::shared_ptr<TcpConnection>> connections_;
};

TcpConnection::TcpConnection(TcpEngine& engine, tcp::socket client)
    : engine_(engine),
      client_(std::move(client)),
      upstream_(engine.io()),
      to_target_(engine.io(), client_, upstream_, true),
      to_client_(engine.io(), upstream_, client_, false) {}

void TcpConnection::Start() {
  error_code ec;
  client_.set_option(tcp::no_delay(true), ec);
  SetBuffers(client_);
  Read(to_target_);
  Connect();
}

void TcpConnection::Kick() {
  Connect();
  Pump(to_target_);
  Pump(to_client_);
}

void TcpConnection::Close() {
  if (closed_) return;
  closed_ = true;
  // Counted first, so a peer that sees the close sees it in stats() too.
  engine_.state().Count([](LinkStats& s) { --s.connections_open; });
  error_code ec;
  client_.close(ec);
  upstream_.close(ec);
  to_target_.timer.cancel();
  to_client_.timer.cancel();
  // Outstanding handlers hold their own references, so this object outlives the erase.
  auto self = shared_from_this();
  engine_.Remove(this);
}

void TcpConnection::Connect() {
  // While partitioned the SYN is "lost": the target is connected once the partition heals.
  if (closed_ || connected_ || connecting_ || engine_.state().partitioned()) return;
  connecting_ = true;
  upstream_.async_connect(engine_.target(), [self = shared_from_this()](const error_code& ec) {
    self->connecting_ = false;
    if (self->closed_) return;
    if (ec) {
      self->engine_.state().Count([](LinkStats& s) { ++s.connect_failures; });
      self->Close();
      return;
    }
    self->connected_ = true;
    error_code opt_ec;
    self->upstream_.set_option(tcp::no_delay(true), opt_ec);
    SetBuffers(self->upstream_);
    self->Read(self->to_client_);
    self->Pump(self->to_target_);
  });
}

void TcpConnection::Read(Direction& d) {
  if (closed_ || d.reading || d.eof || d.queued >= kMaxQueuedBytes) return;
  d.reading = true;
  d.from.async_read_some(
      asio::buffer(d.buffer),
      [self = shared_from_this(), &d](const error_code& ec, size_t n) { self->OnRead(d, ec, n); });
}

void TcpConnection::OnRead(Direction& d, const error_code& ec, size_t n) {
  d.reading = false;
  if (closed_) return;
  if (n > 0) {
    LinkState& state = engine_.state();
    LinkOptions o = state.options();
    TimePoint due = std::max(Clock::now() + state.SampleDelay(o), d.last_due);
    if (state.Chance(o.tcp_stall_probability)) due += o.stall_duration;
    d.last_due = due;
    d.queue.push_back({due, std::string(d.buffer.data(), n)});
    d.queued += n;
  }
  if (ec) {
    d.eof = true;  // EOF, or a reset: either way the peer gets a FIN after what came before
  } else {
    Read(d);
  }
  Pump(d);
}

void TcpConnection::Pump(Direction& d) {
  LinkState& state = engine_.state();
  if (closed_ || d.writing || d.waiting || state.partitioned()) return;
  if (d.to_target && !connected_) return;
  if (d.queue.empty()) {
    if (d.eof && !d.shut) {
      d.shut = true;
      error_code ec;
      d.to.shutdown(tcp::socket::shutdown_send, ec);
      if (to_target_.shut && to_client_.shut) Close();
    }
    return;
  }
  const Chunk& chunk = d.queue.front();
  size_t piece = chunk.data.size() - d.front_written;
  TimePoint ready = chunk.due;
  uint64_t bandwidth = state.options().bandwidth_bytes_per_s;
  if (bandwidth > 0) {
    piece = std::min(piece, PacingSlice(bandwidth));
    ready = std::max(chunk.due, d.link_free) + TransmitTime(piece, bandwidth);
  }
  if (ready > Clock::now()) {
    d.waiting = true;
    d.timer.expires_at(ready);
    d.timer.async_wait([self = shared_from_this(), &d](const error_code& ec) {
      d.waiting = false;
      if (!ec) self->Pump(d);
    });
    return;
  }
  if (bandwidth > 0) d.link_free = ready;
  // Counted when handed over, so a receiver that got the bytes sees them in stats(); a failed
  // write takes back what it did not write.
  CountDelivered(d, static_cast<int64_t>(piece));
  d.writing = true;
  asio::async_write(d.to, asio::buffer(chunk.data.data() + d.front_written, piece),
                    [self = shared_from_this(), &d, piece](const error_code& ec, size_t n) {
                      if (ec) self->CountDelivered(d, -static_cast<int64_t>(piece - n));
                      self->OnWritten(d, ec, n);
                    });
}

void TcpConnection::CountDelivered(const Direction& d, int64_t bytes) {
  engine_.state().Count(
      [&](LinkStats& s) { (d.to_target ? s.bytes_to_target : s.bytes_to_client) += bytes; });
}

void TcpConnection::OnWritten(Direction& d, const error_code& ec, size_t n) {
  d.writing = false;
  if (closed_) return;
  if (ec) {
    Close();
    return;
  }
  d.front_written += n;
  if (d.front_written == d.queue.front().data.size()) {
    d.queued -= d.queue.front().data.size();
    d.queue.pop_front();
    d.front_written = 0;
    Read(d);  // below the bound again
  }
  Pump(d);
}

// The UDP side of a relay: the listening socket, one connected socket per client address, and a
// timed queue per direction. Relay thread only, except Open and Start before the thread runs.
class UdpEngine {
 public:
  UdpEngine(asio::io_context& io, LinkState& state, udp::endpoint target)
      : io_(io),
        state_(state),
        target_(std::move(target)),
        socket_(io),
        buffer_(kUdpMaxDatagram),
        to_target_(io, true),
        to_client_(io, false),
        sweep_(io) {}

  Status Open(const udp::endpoint& listen) {
    error_code ec;
    socket_.open(listen.protocol(), ec);
    if (!ec) socket_.bind(listen, ec);
    if (!ec) socket_.non_blocking(true, ec);
    if (ec) {
      return UnavailableError("cannot bind udp " + listen.address().to_string() + ":" +
                              std::to_string(listen.port()) + ": " + ec.message());
    }
    SetBuffers(socket_);
    return Status::Ok();
  }
  uint16_t port() const { return socket_.local_endpoint().port(); }
  void Start() {
    Receive();
    Sweep();
  }

  void Shutdown() {
    stopping_ = true;
    error_code ec;
    socket_.close(ec);
    sweep_.cancel();
    for (Direction* d : {&to_target_, &to_client_}) {
      d->timer.cancel();
      d->queue.clear();
      d->queued = 0;
    }
    auto peers = std::move(peers_);
    peers_.clear();
    for (auto& [endpoint, peer] : peers) ClosePeer(*peer);
  }

 private:
  // A client address and its socket connected to the target.
  struct Peer {
    Peer(asio::io_context& io, udp::endpoint client_endpoint)
        : client(std::move(client_endpoint)), socket(io), buffer(kUdpMaxDatagram) {}
    udp::endpoint client;
    udp::socket socket;
    std::vector<char> buffer;
    TimePoint last_active;
    bool closed = false;
  };
  struct Datagram {
    std::shared_ptr<Peer> peer;
    std::string data;
  };
  struct Direction {
    Direction(asio::io_context& io, bool target) : timer(io), to_target(target) {}
    asio::steady_timer timer;
    bool to_target;
    std::multimap<TimePoint, Datagram> queue;  // by send time
    size_t queued = 0;
    TimePoint link_free{};
    bool armed = false;
    TimePoint armed_at{};
    uint64_t generation = 0;  // a wait whose generation is stale was superseded
  };

  void Receive() {
    socket_.async_receive_from(asio::buffer(buffer_), sender_,
                               [this](const error_code& ec, size_t n) {
                                 if (stopping_ || ec == asio::error::operation_aborted) return;
                                 // Other errors (an ICMP refusal from an earlier send) are
                                 // transient for an unconnected socket.
                                 if (!ec) OnClientDatagram(n);
                                 Receive();
                               });
  }

  void OnClientDatagram(size_t n) {
    std::shared_ptr<Peer> peer = FindOrAddPeer(sender_);
    if (!peer) {
      state_.Count([](LinkStats& s) { ++s.datagrams_dropped; });
      return;
    }
    peer->last_active = Clock::now();
    Schedule(to_target_, peer, std::string(buffer_.data(), n));
  }

  void ReceiveFromTarget(const std::shared_ptr<Peer>& peer) {
    peer->socket.async_receive(asio::buffer(peer->buffer),
                               [this, peer](const error_code& ec, size_t n) {
                                 if (stopping_ || peer->closed) return;
                                 if (ec == asio::error::operation_aborted) return;
                                 // Connection refused (the target is down) is reported once per
                                 // ICMP message; keep listening for when it comes up.
                                 if (!ec) {
                                   peer->last_active = Clock::now();
                                   Schedule(to_client_, peer, std::string(peer->buffer.data(), n));
                                 }
                                 ReceiveFromTarget(peer);
                               });
  }

  std::shared_ptr<Peer> FindOrAddPeer(const udp::endpoint& client) {
    auto it = peers_.find(client);
    if (it != peers_.end()) return it->second;
    if (peers_.size() >= kMaxUdpPeers) {
      auto oldest = std::min_element(peers_.begin(), peers_.end(), [](auto& a, auto& b) {
        return a.second->last_active < b.second->last_active;
      });
      std::shared_ptr<Peer> evicted = oldest->second;
      peers_.erase(oldest);
      ClosePeer(*evicted);
    }
    auto peer = std::make_shared<Peer>(io_, client);
    error_code ec;
    peer->socket.open(udp::v4(), ec);
    if (!ec) peer->socket.connect(target_, ec);
    if (!ec) peer->socket.non_blocking(true, ec);
    if (ec) return nullptr;
    SetBuffers(peer->socket);
    peers_[client] = peer;
    state_.Count([](LinkStats& s) {
      ++s.connections_accepted;
      ++s.connections_open;
    });
    ReceiveFromTarget(peer);
    return peer;
  }

  // The caller has taken the peer out of peers_.
  void ClosePeer(Peer& peer) {
    if (peer.closed) return;
    peer.closed = true;
    error_code ec;
    peer.socket.close(ec);
    state_.Count([](LinkStats& s) { --s.connections_open; });
  }

  void Schedule(Direction& d, const std::shared_ptr<Peer>& peer, std::string data) {
    LinkOptions o = state_.options();
    if (state_.partitioned() || state_.Chance(o.loss) || d.queued + data.size() > kMaxQueuedBytes) {
      state_.Count([](LinkStats& s) { ++s.datagrams_dropped; });
      return;
    }
    TimePoint at = Clock::now() + state_.SampleDelay(o);
    if (o.bandwidth_bytes_per_s > 0) {
      at = std::max(at, d.link_free) + TransmitTime(data.size(), o.bandwidth_bytes_per_s);
      d.link_free = at;
    }
    d.queued += data.size();
    d.queue.emplace(at, Datagram{peer, std::move(data)});
    Arm(d);
  }

  void Arm(Direction& d) {
    if (d.queue.empty()) return;
    TimePoint first = d.queue.begin()->first;
    if (d.armed && d.armed_at <= first) return;
    d.armed = true;
    d.armed_at = first;
    uint64_t generation = ++d.generation;
    d.timer.expires_at(first);  // cancels a later wait, whose handler then sees a stale generation
    d.timer.async_wait([this, &d, generation](const error_code&) {
      if (stopping_ || generation != d.generation) return;
      d.armed = false;
      Flush(d);
    });
  }

  void Flush(Direction& d) {
    TimePoint now = Clock::now();
    while (!d.queue.empty() && d.queue.begin()->first <= now) {
      auto node = d.queue.extract(d.queue.begin());
      d.queued -= node.mapped().data.size();
      Send(d, node.mapped());
    }
    Arm(d);
  }

  // Counted as delivered before the send, so a receiver that got the datagram sees it in stats();
  // a failed send turns the count into a drop.
  void Send(Direction& d, const Datagram& datagram) {
    if (state_.partitioned() || datagram.peer->closed) {
      state_.Count([](LinkStats& s) { ++s.datagrams_dropped; });
      return;
    }
    int64_t size = static_cast<int64_t>(datagram.data.size());
    auto count = [&](int64_t sign) {
      state_.Count([&](LinkStats& s) {
        (d.to_target ? s.datagrams_to_target : s.datagrams_to_client) += sign;
        (d.to_target ? s.bytes_to_target : s.bytes_to_client) += sign * size;
        if (sign < 0) ++s.datagrams_dropped;
      });
    };
    count(1);
    error_code ec;
    if (d.to_target) {
      datagram.peer->socket.send(asio::buffer(datagram.data), 0, ec);
    } else {
      socket_.send_to(asio::buffer(datagram.data), datagram.peer->client, 0, ec);
    }
    if (ec) count(-1);
  }

  void Sweep() {
    sweep_.expires_after(kUdpSweepPeriod);
    sweep_.async_wait([this](const error_code& ec) {
      if (ec || stopping_) return;
      TimePoint cutoff = Clock::now() - kUdpIdleTimeout;
      for (auto it = peers_.begin(); it != peers_.end();) {
        if (it->second->last_active < cutoff) {
          ClosePeer(*it->second);
          it = peers_.erase(it);
        } else {
          ++it;
        }
      }
      Sweep();
    });
  }

  asio::io_context& io_;
  LinkState& state_;
  udp::endpoint target_;
  udp::socket socket_;
  udp::endpoint sender_;
  std::vector<char> buffer_;
  std::map<udp::endpoint, std::shared_ptr<Peer>> peers_;
  Direction to_target_;
  Direction to_client_;
  asio::steady_timer sweep_;
  bool stopping_ = false;
};

}  // namespace

// Members are destroyed in reverse order: the thread is joined (by Stop) and the engines go before
// the io_context their sockets belong to.
struct LinkRelay::Impl {
  Impl(LinkProtocol p, const LinkOptions& options)
      : protocol(p), state(options), work(asio::make_work_guard(io)) {}

  LinkProtocol protocol;
  asio::io_context io;
  LinkState state;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::unique_ptr<TcpEngine> tcp;
  std::unique_ptr<UdpEngine> udp;
  std::string address;
  uint16_t port = 0;
  std::mutex stop_mu;
  bool stopped = false;  // guarded by stop_mu
  std::thread thread;
};

Result<std::unique_ptr<LinkRelay>> LinkRelay::Start(LinkProtocol protocol, std::string listen,
                                                    std::string target, LinkOptions options) {
  DMOE_ASSIGN_OR_RETURN(auto listen_at, ParseLoopback(listen, "listen address", true));
  DMOE_ASSIGN_OR_RETURN(auto target_at, ParseLoopback(target, "target address", false));
  DMOE_RETURN_IF_ERROR(ValidateOptions(options));

  auto impl = std::make_unique<Impl>(protocol, options);
  if (protocol == LinkProtocol::kTcp) {
    impl->tcp = std::make_unique<TcpEngine>(impl->io, impl->state,
                                            tcp::endpoint(target_at.first, target_at.second));
    DMOE_RETURN_IF_ERROR(impl->tcp->Open(tcp::endpoint(listen_at.first, listen_at.second)));
    impl->port = impl->tcp->port();
    impl->tcp->Start();
  } else {
    impl->udp = std::make_unique<UdpEngine>(impl->io, impl->state,
                                            udp::endpoint(target_at.first, target_at.second));
    DMOE_RETURN_IF_ERROR(impl->udp->Open(udp::endpoint(listen_at.first, listen_at.second)));
    impl->port = impl->udp->port();
    impl->udp->Start();
  }
  impl->address = listen_at.first.to_string() + ":" + std::to_string(impl->port);
  impl->thread = std::thread([io = &impl->io] { io->run(); });
  return std::unique_ptr<LinkRelay>(new LinkRelay(std::move(impl)));
}

LinkRelay::LinkRelay(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LinkRelay::~LinkRelay() { Stop(); }

std::string LinkRelay::address() const { return impl_->address; }
uint16_t LinkRelay::port() const { return impl_->port; }
LinkProtocol LinkRelay::protocol() const { return impl_->protocol; }

Status LinkRelay::SetOptions(LinkOptions options) {
  DMOE_RETURN_IF_ERROR(ValidateOptions(options));
  impl_->state.set_options(options);
  // A looser bandwidth cap may let a waiting write go sooner.
  if (impl_->tcp) asio::post(impl_->io, [impl = impl_.get()] { impl->tcp->Kick(); });
  return Status::Ok();
}

LinkOptions LinkRelay::options() const { return impl_->state.options(); }

void LinkRelay::SetPartitioned(bool partitioned) {
  impl_->state.set_partitioned(partitioned);
  if (!partitioned && impl_->tcp) {
    asio::post(impl_->io, [impl = impl_.get()] { impl->tcp->Kick(); });
  }
}

bool LinkRelay::partitioned() const { return impl_->state.partitioned(); }

LinkStats LinkRelay::stats() const { return impl_->state.stats(); }

void LinkRelay::Stop() {
  {
    std::lock_guard lock(impl_->stop_mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  asio::post(impl_->io, [impl = impl_.get()] {
    if (impl->tcp) impl->tcp->Shutdown();
    if (impl->udp) impl->udp->Shutdown();
    impl->work.reset();
    // The aborted handlers queued by the closes run first and re-arm nothing; stopping after them
    // guarantees the join below even if one did.
    asio::post(impl->io, [impl] { impl->io.stop(); });
  });
  impl_->thread.join();
}

}  // namespace dmoe::testing
