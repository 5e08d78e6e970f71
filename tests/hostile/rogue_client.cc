#include "tests/hostile/rogue_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

namespace dmoe::hostile {

namespace {

using Clock = std::chrono::steady_clock;

bool WaitFd(int fd, short events, Clock::time_point until) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

}  // namespace

std::string WsFrameHead(uint64_t length) {
  std::string h;
  h.push_back(static_cast<char>(0x82));
  if (length < 126) {
    h.push_back(static_cast<char>(0x80 | length));
  } else if (length < 65536) {
    h.push_back(static_cast<char>(0x80 | 126));
    h.push_back(static_cast<char>(length >> 8));
    h.push_back(static_cast<char>(length & 0xff));
  } else {
    h.push_back(static_cast<char>(0x80 | 127));
    for (int i = 7; i >= 0; --i) h.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  }
  h.append(4, '\0');
  return h;
}

uint64_t ResidentBytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      uint64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

RogueClient::RogueClient(std::string endpoint, std::string source_ip)
    : source_ip_(std::move(source_ip)) {
  // "http://HOST:PORT"
  std::string rest = endpoint.substr(endpoint.find("://") + 3);
  size_t colon = rest.rfind(':');
  host_ = rest.substr(0, colon);
  port_ = static_cast<uint16_t>(std::stoi(rest.substr(colon + 1)));
}

RogueClient::~RogueClient() { CloseAll(); }

void RogueClient::CloseAll() {
  for (Conn& c : conns_) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
    c.closed = true;
  }
}

int RogueClient::Connect() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, source_ip_.c_str(), &local.sin_addr);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(port_);
  ::inet_pton(AF_INET, host_.c_str(), &remote.sin_addr);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0) {
    ::close(fd);
    return -1;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof(remote)) != 0 &&
      errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  if (!WaitFd(fd, POLLOUT, Clock::now() + std::chrono::seconds(5))) {
    ::close(fd);
    return -1;
  }
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool RogueClient::SendAll(int fd, std::string_view data) {
  const auto until = Clock::now() + std::chrono::seconds(5);
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitFd(fd, POLLOUT, until)) return false;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
  return true;
}

bool RogueClient::Upgrade(Conn& conn) {
  if (!SendAll(conn.fd, "GET /v1/ws HTTP/1.1\r\nHost: " + host_ +
                            "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n")) {
    return false;
  }
  // Reads the answer's header byte by byte, so that nothing after it is taken.
  const auto until = Clock::now() + std::chrono::seconds(10);
  std::string head;
  while (head.find("\r\n\r\n") == std::string::npos) {
    char c;
    ssize_t n = ::recv(conn.fd, &c, 1, 0);
    if (n == 1) {
      head.push_back(c);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && WaitFd(conn.fd, POLLIN, until)) {
      continue;
    }
    break;
  }
  conn.received = head;
  return head.rfind("HTTP/1.1 101", 0) == 0;
}

int RogueClient::SilentUploads(int n, const std::string& path, uint64_t declared, uint64_t sent) {
  int opened = 0;
  const std::string request =
      "POST " + path + " HTTP/1.1\r\nHost: " + host_ +
      "\r\nContent-Type: application/octet-stream\r\nContent-Length: " + std::to_string(declared) +
      "\r\n\r\n" + std::string(sent, 'r');
  for (int i = 0; i < n; ++i) {
    Conn c;
    c.fd = Connect();
    if (c.fd < 0) continue;
    SendAll(c.fd, request);  // A refused connection may close before taking it all.
    conns_.push_back(std::move(c));
    ++opened;
  }
  return opened;
}

int RogueClient::EndlessChunked(int n, const std::string& path, uint64_t sent) {
  int opened = 0;
  std::ostringstream chunk;
  chunk << std::hex << sent << "\r\n" << std::string(sent, 'c') << "\r\n";
  const std::string request = "POST " + path + " HTTP/1.1\r\nHost: " + host_ +
                              "\r\nContent-Type: application/octet-stream\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n" +
                              chunk.str();
  for (int i = 0; i < n; ++i) {
    Conn c;
    c.fd = Connect();
    if (c.fd < 0) continue;
    SendAll(c.fd, request);
    conns_.push_back(std::move(c));
    ++opened;
  }
  return opened;
}

int RogueClient::HalfWebSocketMessages(int n, uint64_t declared, uint64_t sent) {
  int opened = 0;
  const std::string frame = WsFrameHead(declared) + std::string(sent, 'h');
  for (int i = 0; i < n; ++i) {
    Conn c;
    c.fd = Connect();
    if (c.fd < 0) continue;
    if (Upgrade(c)) SendAll(c.fd, frame);
    conns_.push_back(std::move(c));
    ++opened;
  }
  return opened;
}

int RogueClient::UnreadWebSocket(int n, const std::vector<uint8_t>& message, int copies) {
  int opened = 0;
  std::string frames;
  const std::string one = WsFrameHead(message.size()) + std::string(message.begin(), message.end());
  for (int i = 0; i < copies; ++i) frames += one;
  for (int i = 0; i < n; ++i) {
    Conn c;
    c.fd = Connect();
    if (c.fd < 0) continue;
    c.never_read = true;
    // The server stops reading once enough answers wait: what it does not take stays unsent.
    if (Upgrade(c)) {
      size_t sent = 0;
      while (sent < frames.size()) {
        ssize_t k = ::send(c.fd, frames.data() + sent, frames.size() - sent, MSG_NOSIGNAL);
        if (k <= 0) break;
        sent += static_cast<size_t>(k);
      }
    }
    conns_.push_back(std::move(c));
    ++opened;
  }
  return opened;
}

int RogueClient::IdleConnections(int n) {
  int opened = 0;
  for (int i = 0; i < n; ++i) {
    Conn c;
    c.fd = Connect();
    if (c.fd < 0) continue;
    conns_.push_back(std::move(c));
    ++opened;
  }
  return opened;
}

void RogueClient::Poll() {
  char buf[16384];
  for (Conn& c : conns_) {
    if (c.closed || c.fd < 0) continue;
    if (c.never_read) {
      // Sees a close without reading: a reset or FIN shows as POLLHUP/POLLRDHUP/POLLERR.
      pollfd p{c.fd, POLLRDHUP, 0};
      if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR))) c.closed = true;
      continue;
    }
    for (;;) {
      ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        if (c.received.size() < (1 << 16)) c.received.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) c.closed = true;
      break;
    }
  }
}

bool RogueClient::WaitOpenAtMost(size_t n, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  for (;;) {
    Poll();
    if (open() <= n) return true;
    if (Clock::now() >= until) return false;
    // Nothing to wait on across hundreds of sockets at once without another helper: poll them
    // all with a short timeout instead of sleeping.
    std::vector<pollfd> fds;
    for (const Conn& c : conns_) {
      if (c.closed || c.fd < 0) continue;
      fds.push_back({c.fd, static_cast<short>(c.never_read ? POLLRDHUP : POLLIN | POLLRDHUP), 0});
    }
    ::poll(fds.data(), fds.size(), 20);
  }
}

size_t RogueClient::open() const {
  size_t n = 0;
  for (const Conn& c : conns_) n += c.closed ? 0 : 1;
  return n;
}

size_t RogueClient::answered(std::string_view prefix, std::string_view also) const {
  size_t n = 0;
  for (const Conn& c : conns_) {
    if (c.received.rfind(prefix, 0) != 0) continue;
    if (!also.empty() && c.received.find(also) == std::string::npos) continue;
    ++n;
  }
  return n;
}

}  // namespace dmoe::hostile
