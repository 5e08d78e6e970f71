// Real-wire tests of LinkRelay and dmoe-linkemu: loopback echo servers behind a relay, timed with
// steady_clock around blocking reads that have deadlines. Lower bounds on time are physics and
// strict; upper bounds leave generous slack for a loaded machine.
#include "tests/testing/link_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing/process.h"

namespace dmoe::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(left, 0));
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  return addr;
}

uint16_t LocalPort(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.sin_port);
}

void SetBuffers(int fd) {
  int size = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
}

// An owned descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Writes all of data, waiting for room; gives up when `stop_fd` (if >= 0) becomes readable or the
// peer fails.
bool WriteAll(int fd, const char* data, size_t size, int stop_fd = -1) {
  while (size > 0) {
    pollfd fds[2] = {{fd, POLLOUT, 0}, {stop_fd, POLLIN, 0}};
    if (poll(fds, stop_fd >= 0 ? 2 : 1, -1) < 0) return false;
    if (stop_fd >= 0 && (fds[1].revents & POLLIN)) return false;
    ssize_t n = send(fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Loopback TCP server that echoes every connection until EOF, then half-closes it.
class TcpEchoServer {
 public:
  TcpEchoServer() {
    listen_ = Fd(socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in addr = Loopback(0);
    bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_.get(), 64);
    port_ = LocalPort(listen_.get());
    int p[2];
    EXPECT_EQ(pipe(p), 0);
    stop_read_ = Fd(p[0]);
    stop_write_ = Fd(p[1]);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~TcpEchoServer() {
    EXPECT_EQ(write(stop_write_.get(), "x", 1), 1);
    accept_thread_.join();
    for (std::thread& t : connection_threads_) t.join();
  }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int accepted() const { return accepted_.load(); }

 private:
  void AcceptLoop() {
    for (;;) {
      pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0 || (fds[1].revents & POLLIN)) return;
      int fd = accept(listen_.get(), nullptr, nullptr);
      if (fd < 0) continue;
      ++accepted_;
      connection_threads_.emplace_back([this, fd] { Echo(Fd(fd)); });
    }
  }
  void Echo(Fd fd) {
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::vector<char> buffer(64 << 10);
    for (;;) {
      pollfd fds[2] = {{fd.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0 || (fds[1].revents & POLLIN)) return;
      ssize_t n = recv(fd.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) break;
      if (!WriteAll(fd.get(), buffer.data(), static_cast<size_t>(n), stop_read_.get())) return;
    }
    shutdown(fd.get(), SHUT_WR);
    // Wait for the peer to close (or the stop) so the FIN is not followed by a reset.
    pollfd fds[2] = {{fd.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
    poll(fds, 2, 10'000);
  }

  Fd listen_;
  Fd stop_read_;
  Fd stop_write_;
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::thread accept_thread_;
  std::vector<std::thread> connection_threads_;  // touched by the accept thread, then joined
};

// Loopback UDP server that counts datagrams and, when `echo`, sends each back to its sender.
class UdpServer {
 public:
  explicit UdpServer(bool echo) : echo_(echo) {
    fd_ = Fd(socket(AF_INET, SOCK_DGRAM, 0));
    SetBuffers(fd_.get());
    sockaddr_in addr = Loopback(0);
    bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    port_ = LocalPort(fd_.get());
    int p[2];
    EXPECT_EQ(pipe(p), 0);
    stop_read_ = Fd(p[0]);
    stop_write_ = Fd(p[1]);
    thread_ = std::thread([this] { Loop(); });
  }
  ~UdpServer() {
    EXPECT_EQ(write(stop_write_.get(), "x", 1), 1);
    thread_.join();
  }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int received() const { return received_.load(); }

 private:
  void Loop() {
    char buffer[65536];
    for (;;) {
      pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0 || (fds[1].revents & POLLIN)) return;
      sockaddr_in from{};
      socklen_t len = sizeof(from);
      ssize_t n = recvfrom(fd_.get(), buffer, sizeof(buffer), MSG_DONTWAIT,
                           reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      ++received_;
      if (echo_) sendto(fd_.get(), buffer, n, 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }

  bool echo_;
  Fd fd_;
  Fd stop_read_;
  Fd stop_write_;
  uint16_t port_ = 0;
  std::atomic<int> received_{0};
  std::thread thread_;
};

Fd ConnectTcp(uint16_t port) {
  Fd fd(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in addr = Loopback(port);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << strerror(errno);
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool Send(const Fd& fd, const std::string& data) {
  return WriteAll(fd.get(), data.data(), data.size());
}

// Reads until `n` bytes, EOF or the deadline; returns what came.
std::string ReadExactly(const Fd& fd, size_t n, milliseconds timeout, bool* eof = nullptr) {
  Clock::time_point deadline = Clock::now() + timeout;
  std::string out;
  std::vector<char> buffer(64 << 10);
  if (eof) *eof = false;
  while (out.size() < n) {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, RemainingMs(deadline)) <= 0) break;
    ssize_t got = recv(fd.get(), buffer.data(), std::min(buffer.size(), n - out.size()), 0);
    if (got <= 0) {
      if (eof) *eof = true;
      break;
    }
    out.append(buffer.data(), static_cast<size_t>(got));
  }
  return out;
}

// True when the peer closes (EOF or reset) within `timeout`; bytes before that are discarded.
bool WaitForClose(const Fd& fd, milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  char buffer[4096];
  for (;;) {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, RemainingMs(deadline)) <= 0) return false;
    if (recv(fd.get(), buffer, sizeof(buffer), 0) <= 0) return true;
  }
}

// Sends `message` and returns how long its echo took to come back whole; nullopt after 10 s.
std::optional<milliseconds> RoundTrip(const Fd& fd, const std::string& message) {
  Clock::time_point start = Clock::now();
  if (!Send(fd, message)) return std::nullopt;
  std::string echoed = ReadExactly(fd, message.size(), 10s);
  if (echoed != message) return std::nullopt;
  return Since(start);
}

Fd UdpSocket() {
  Fd fd(socket(AF_INET, SOCK_DGRAM, 0));
  SetBuffers(fd.get());
  sockaddr_in addr = Loopback(0);
  bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  return fd;
}

bool SendTo(const Fd& fd, uint16_t port, const std::string& data) {
  sockaddr_in addr = Loopback(port);
  return sendto(fd.get(), data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&addr),
                sizeof(addr)) == static_cast<ssize_t>(data.size());
}

// The next datagram within `timeout`, and the port it came from.
std::optional<std::string> ReceiveFrom(const Fd& fd, milliseconds timeout, uint16_t* from_port) {
  pollfd p{fd.get(), POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
  char buffer[65536];
  sockaddr_in from{};
  socklen_t len = sizeof(from);
  ssize_t n =
      recvfrom(fd.get(), buffer, sizeof(buffer), 0, reinterpret_cast<sockaddr*>(&from), &len);
  if (n < 0) return std::nullopt;
  if (from_port) *from_port = ntohs(from.sin_port);
  return std::string(buffer, static_cast<size_t>(n));
}

std::unique_ptr<LinkRelay> StartRelay(LinkProtocol protocol, const std::string& target,
                                      LinkOptions options) {
  auto relay = LinkRelay::Start(protocol, "127.0.0.1:0", target, options);
  EXPECT_TRUE(relay.ok()) << relay.status().ToString();
  return relay.ok() ? std::move(*relay) : nullptr;
}

TEST(LinkRelayTest, TcpRoundTripTakesTwiceTheDelay) {
  TcpEchoServer echo;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(), {.delay = 50ms});
  ASSERT_NE(relay, nullptr);
  EXPECT_EQ(relay->address(), "127.0.0.1:" + std::to_string(relay->port()));
  Fd client = ConnectTcp(relay->port());
  for (int i = 0; i < 3; ++i) {
    std::optional<milliseconds> rtt = RoundTrip(client, "ping-" + std::to_string(i));
    ASSERT_TRUE(rtt.has_value());
    EXPECT_GE(*rtt, 100ms);
    EXPECT_LT(*rtt, 100ms + 1500ms);
  }
  LinkStats stats = relay->stats();
  EXPECT_EQ(stats.bytes_to_target, 18u);
  EXPECT_EQ(stats.bytes_to_client, 18u);
  EXPECT_EQ(stats.connections_accepted, 1u);
  EXPECT_EQ(stats.connections_open, 1u);
}

TEST(LinkRelayTest, TcpJitterKeepsByteOrderAndPassesTheHalfClose) {
  TcpEchoServer echo;
  auto relay =
      StartRelay(LinkProtocol::kTcp, echo.address(), {.delay = 2ms, .jitter = 2ms, .seed = 7});
  ASSERT_NE(relay, nullptr);
  std::string data(4 << 20, '\0');
  std::mt19937_64 rng(42);
  for (char& c : data) c = static_cast<char>(rng());
  Fd client = ConnectTcp(relay->port());
  // Uneven writes, so the relay reads many chunks of varying sizes, each with its own jitter.
  std::thread sender([&] {
    size_t offset = 0;
    for (size_t i = 0; offset < data.size(); ++i) {
      size_t n = std::min(data.size() - offset, 1000 + (i * 7919) % 40000);
      if (!WriteAll(client.get(), data.data() + offset, n)) return;
      offset += n;
    }
    shutdown(client.get(), SHUT_WR);
  });
  bool eof = false;
  std::string echoed = ReadExactly(client, data.size() + 1, 20s, &eof);
  sender.join();
  EXPECT_TRUE(eof) << "the echo server's FIN should follow the data through the relay";
  ASSERT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data) << "bytes reordered or corrupted";
  EXPECT_EQ(relay->stats().bytes_to_target, data.size());
  EXPECT_EQ(relay->stats().bytes_to_client, data.size());
  // Both sides half-closed: the relay closes the connection.
  EXPECT_TRUE(PollUntil([&] { return relay->stats().connections_open == 0; }, 5s));
}

TEST(LinkRelayTest, TcpBandwidthCapPacesATransfer) {
  TcpEchoServer echo;
  constexpr size_t kBytes = 1 << 20;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(), {.bandwidth_bytes_per_s = kBytes});
  ASSERT_NE(relay, nullptr);
  Fd client = ConnectTcp(relay->port());
  std::string data(kBytes, 'b');
  Clock::time_point start = Clock::now();
  std::thread sender([&] { WriteAll(client.get(), data.data(), data.size()); });
  std::string echoed = ReadExactly(client, kBytes, 20s);
  milliseconds elapsed = Since(start);
  sender.join();
  EXPECT_EQ(echoed.size(), kBytes);
  EXPECT_GE(elapsed, 900ms);
  EXPECT_LT(elapsed, 8s);
}

TEST(LinkRelayTest, TcpStallHoldsTheDirection) {
  TcpEchoServer echo;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(),
                          {.tcp_stall_probability = 1, .stall_duration = 150ms});
  ASSERT_NE(relay, nullptr);
  Fd client = ConnectTcp(relay->port());
  std::optional<milliseconds> rtt = RoundTrip(client, "stalled");
  ASSERT_TRUE(rtt.has_value());
  EXPECT_GE(*rtt, 300ms);
  EXPECT_LT(*rtt, 300ms + 1500ms);
}

TEST(LinkRelayTest, TcpPartitionHoldsBytesAndNewConnectionsUntilHeal) {
  TcpEchoServer echo;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(), {});
  ASSERT_NE(relay, nullptr);
  Fd first = ConnectTcp(relay->port());
  ASSERT_TRUE(RoundTrip(first, "before").has_value());

  relay->SetPartitioned(true);
  EXPECT_TRUE(relay->partitioned());
  ASSERT_TRUE(Send(first, "held"));
  Fd second = ConnectTcp(relay->port());  // accepted by the relay, not yet forwarded
  ASSERT_TRUE(Send(second, "new"));
  EXPECT_EQ(ReadExactly(first, 4, 300ms), "");
  EXPECT_EQ(ReadExactly(second, 3, 50ms), "");
  EXPECT_EQ(echo.accepted(), 1);
  EXPECT_EQ(relay->stats().connections_accepted, 2u);

  relay->SetPartitioned(false);
  EXPECT_EQ(ReadExactly(first, 4, 10s), "held");
  EXPECT_EQ(ReadExactly(second, 3, 10s), "new");
  EXPECT_EQ(echo.accepted(), 2);
}

TEST(LinkRelayTest, TcpFailedTargetConnectClosesTheClient) {
  // A port that was just free: nothing listens there.
  Fd probe(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in addr = Loopback(0);
  bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  uint16_t dead_port = LocalPort(probe.get());
  probe = Fd();
  auto relay = StartRelay(LinkProtocol::kTcp, "127.0.0.1:" + std::to_string(dead_port), {});
  ASSERT_NE(relay, nullptr);
  Fd client = ConnectTcp(relay->port());
  EXPECT_TRUE(WaitForClose(client, 10s));
  EXPECT_EQ(relay->stats().connect_failures, 1u);
  EXPECT_EQ(relay->stats().connections_open, 0u);
}

TEST(LinkRelayTest, StopClosesConnectionsAndIsIdempotent) {
  TcpEchoServer echo;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(), {});
  ASSERT_NE(relay, nullptr);
  Fd client = ConnectTcp(relay->port());
  ASSERT_TRUE(RoundTrip(client, "hi").has_value());
  relay->Stop();
  EXPECT_TRUE(WaitForClose(client, 10s));
  relay->Stop();
  relay->SetPartitioned(false);  // harmless after Stop
}

TEST(LinkRelayTest, SetOptionsChangesTheDelayWhileRunning) {
  TcpEchoServer echo;
  auto relay = StartRelay(LinkProtocol::kTcp, echo.address(), {});
  ASSERT_NE(relay, nullptr);
  Fd client = ConnectTcp(relay->port());
  ASSERT_TRUE(RoundTrip(client, "fast").has_value());

  ASSERT_TRUE(relay->SetOptions({.delay = 100ms}).ok());
  EXPECT_EQ(relay->options().delay, 100ms);
  std::optional<milliseconds> slow = RoundTrip(client, "slow");
  ASSERT_TRUE(slow.has_value());
  EXPECT_GE(*slow, 200ms);

  ASSERT_TRUE(relay->SetOptions({}).ok());
  std::optional<milliseconds> fast = RoundTrip(client, "fast");
  ASSERT_TRUE(fast.has_value());
  EXPECT_LT(*fast, 200ms);

  Status bad = relay->SetOptions({.loss = 2});
  EXPECT_EQ(bad.code(), Code::kInvalidArgument);
  EXPECT_EQ(relay->options().loss, 0);
}

TEST(LinkRelayTest, UdpLossDropsAFractionOfDatagrams) {
  UdpServer sink(/*echo=*/false);
  auto relay = StartRelay(LinkProtocol::kUdp, sink.address(), {.loss = 0.3, .seed = 3});
  ASSERT_NE(relay, nullptr);
  Fd client = UdpSocket();
  constexpr int kDatagrams = 2000;
  constexpr int kBatch = 100;
  // In batches, each handled by the relay before the next, so no socket buffer overflows and
  // every datagram not delivered was dropped by the relay's dice.
  for (int sent = 0; sent < kDatagrams;) {
    for (int i = 0; i < kBatch; ++i, ++sent) {
      ASSERT_TRUE(SendTo(client, relay->port(), "datagram " + std::to_string(sent)));
    }
    ASSERT_TRUE(PollUntil(
        [&] {
          LinkStats s = relay->stats();
          return s.datagrams_to_target + s.datagrams_dropped == static_cast<uint64_t>(sent);
        },
        10s, 1ms));
  }
  LinkStats stats = relay->stats();
  ASSERT_TRUE(PollUntil(
      [&] { return sink.received() >= static_cast<int>(stats.datagrams_to_target); }, 10s, 1ms));
  EXPECT_EQ(sink.received(), static_cast<int>(stats.datagrams_to_target));
  EXPECT_GE(stats.datagrams_dropped, static_cast<uint64_t>(kDatagrams * 0.24));
  EXPECT_LE(stats.datagrams_dropped, static_cast<uint64_t>(kDatagrams * 0.36));
  EXPECT_EQ(stats.connections_accepted, 1u);
}

TEST(LinkRelayTest, UdpRepliesComeBackThroughTheRelayDelayed) {
  UdpServer echo(/*echo=*/true);
  auto relay = StartRelay(LinkProtocol::kUdp, echo.address(), {.delay = 40ms});
  ASSERT_NE(relay, nullptr);
  Fd a = UdpSocket();
  Fd b = UdpSocket();
  for (int round = 0; round < 2; ++round) {
    for (const Fd* client : {&a, &b}) {
      std::string message = "hello from " + std::to_string(LocalPort(client->get()));
      Clock::time_point start = Clock::now();
      ASSERT_TRUE(SendTo(*client, relay->port(), message));
      uint16_t from_port = 0;
      std::optional<std::string> reply = ReceiveFrom(*client, 10s, &from_port);
      milliseconds elapsed = Since(start);
      ASSERT_TRUE(reply.has_value());
      EXPECT_EQ(*reply, message);
      EXPECT_EQ(from_port, relay->port());
      EXPECT_GE(elapsed, 80ms);
      EXPECT_LT(elapsed, 80ms + 1500ms);
    }
  }
  LinkStats stats = relay->stats();
  EXPECT_EQ(stats.connections_accepted, 2u);  // one upstream socket per client address
  EXPECT_EQ(stats.connections_open, 2u);
  EXPECT_EQ(stats.datagrams_to_target, 4u);
  EXPECT_EQ(stats.datagrams_to_client, 4u);
  EXPECT_EQ(stats.datagrams_dropped, 0u);
}

TEST(LinkRelayTest, UdpPartitionDropsDatagrams) {
  UdpServer echo(/*echo=*/true);
  auto relay = StartRelay(LinkProtocol::kUdp, echo.address(), {});
  ASSERT_NE(relay, nullptr);
  Fd client = UdpSocket();
  relay->SetPartitioned(true);
  ASSERT_TRUE(SendTo(client, relay->port(), "lost"));
  EXPECT_FALSE(ReceiveFrom(client, 300ms, nullptr).has_value());
  EXPECT_EQ(relay->stats().datagrams_dropped, 1u);
  EXPECT_EQ(echo.received(), 0);
  relay->SetPartitioned(false);
  ASSERT_TRUE(SendTo(client, relay->port(), "found"));
  EXPECT_EQ(ReceiveFrom(client, 10s, nullptr), std::optional<std::string>("found"));
}

TEST(LinkRelayTest, RefusesNonLoopbackAddressesAndBadOptions) {
  auto code = [](LinkProtocol p, const std::string& listen, const std::string& target,
                 LinkOptions o = {}) {
    return LinkRelay::Start(p, listen, target, o).status().code();
  };
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:0", "10.0.0.1:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kUdp, "127.0.0.1:0", "8.8.8.8:53"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "0.0.0.0:0", "127.0.0.1:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:0", "example.com:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:0", "[::1]:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:0", "127.0.0.1:0"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1", "127.0.0.1:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:70000", "127.0.0.1:80"), Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kUdp, "127.0.0.1:0", "127.0.0.1:80", {.loss = 1.5}),
            Code::kInvalidArgument);
  EXPECT_EQ(code(LinkProtocol::kTcp, "127.0.0.1:0", "127.0.0.1:80", {.delay = -1ms}),
            Code::kInvalidArgument);
  // Another loopback address than 127.0.0.1 is fine.
  auto relay = LinkRelay::Start(LinkProtocol::kUdp, "127.0.0.2:0", "127.0.0.1:80", {});
  ASSERT_TRUE(relay.ok()) << relay.status().ToString();
  EXPECT_EQ((*relay)->address().rfind("127.0.0.2:", 0), 0u);
}

// "relay tcp 127.0.0.1:P -> 127.0.0.1:Q" -> P, or 0.
uint16_t ListenPortOf(const std::optional<std::string>& line) {
  if (!line) return 0;
  size_t colon = line->find(':');
  size_t arrow = line->find(" -> ");
  if (colon == std::string::npos || arrow == std::string::npos || arrow < colon) return 0;
  return static_cast<uint16_t>(std::stoi(line->substr(colon + 1, arrow - colon - 1)));
}

TEST(LinkEmuToolTest, RelaysAndPartitionsOnSignals) {
  TcpEchoServer tcp_echo;
  UdpServer udp_echo(/*echo=*/true);
  auto tool = Process::Spawn({DMOE_LINKEMU_BINARY, "--tcp", "127.0.0.1:0=" + tcp_echo.address(),
                              "--udp", "127.0.0.1:0=" + udp_echo.address(), "--delay-ms", "20"});
  ASSERT_TRUE(tool.ok()) << tool.status().ToString();
  Process& p = **tool;
  std::optional<std::string> tcp_line = p.WaitForLine("relay tcp ", 20s);
  std::optional<std::string> udp_line = p.WaitForLine("relay udp ", 20s);
  ASSERT_TRUE(p.WaitForLine("ready", 20s).has_value()) << p.stderr_text();
  EXPECT_EQ(*tcp_line, "relay tcp 127.0.0.1:" + std::to_string(ListenPortOf(tcp_line)) + " -> " +
                           tcp_echo.address());
  uint16_t tcp_port = ListenPortOf(tcp_line);
  uint16_t udp_port = ListenPortOf(udp_line);
  ASSERT_NE(tcp_port, 0);
  ASSERT_NE(udp_port, 0);

  Fd client = ConnectTcp(tcp_port);
  std::optional<milliseconds> rtt = RoundTrip(client, "through the tool");
  ASSERT_TRUE(rtt.has_value());
  EXPECT_GE(*rtt, 40ms);
  Fd udp = UdpSocket();
  ASSERT_TRUE(SendTo(udp, udp_port, "datagram"));
  EXPECT_EQ(ReceiveFrom(udp, 10s, nullptr), std::optional<std::string>("datagram"));

  ASSERT_TRUE(p.Signal(SIGUSR1));
  ASSERT_TRUE(p.WaitForLine("partitioned", 10s).has_value());
  ASSERT_TRUE(Send(client, "held"));
  EXPECT_EQ(ReadExactly(client, 4, 300ms), "");
  ASSERT_TRUE(p.Signal(SIGUSR2));
  ASSERT_TRUE(p.WaitForLine("healed", 10s).has_value());
  EXPECT_EQ(ReadExactly(client, 4, 10s), "held");

  int status = p.Stop(SIGTERM, 10s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << p.stderr_text();
}

TEST(LinkEmuToolTest, HelpExplainsAndBadSpecsExitTwo) {
  RunResult help = testing::Run({DMOE_LINKEMU_BINARY, "--help"}, 20s);
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--tcp"), std::string::npos);
  EXPECT_NE(help.out.find("SIGUSR1"), std::string::npos);

  RunResult remote = testing::Run({DMOE_LINKEMU_BINARY, "--tcp", "127.0.0.1:0=10.0.0.1:80"}, 20s);
  EXPECT_EQ(remote.exit_code, 2);
  EXPECT_NE(remote.err.find("loopback"), std::string::npos) << remote.err;

  RunResult no_relay = testing::Run({DMOE_LINKEMU_BINARY, "--delay-ms", "5"}, 20s);
  EXPECT_EQ(no_relay.exit_code, 2);
}

}  // namespace
}  // namespace dmoe::testing
