// Loopback helpers for net tests: raw POSIX sockets for what a well-behaved client never sends
// (oversized or malformed requests, half-sent bodies), and polling with a deadline instead of
// sleeps.
#ifndef DMOE_TESTS_NET_TEST_UTIL_H_
#define DMOE_TESTS_NET_TEST_UTIL_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "net/http_client.h"
#include "net/http_server.h"

namespace dmoe::net::testing {

// A connected TCP socket to 127.0.0.1:port; closed on destruction.
class RawSocket {
 public:
  explicit RawSocket(uint16_t port);
  ~RawSocket();
  bool connected() const { return fd_ >= 0; }
  bool Send(const std::string& data);
  // Reads until the peer closes or `timeout` passes. `closed` tells which.
  std::string ReadUntilClose(std::chrono::milliseconds timeout, bool* closed = nullptr);
  // Reads one response header (until "\r\n\r\n") or up to `timeout`.
  std::string ReadHead(std::chrono::milliseconds timeout);

 private:
  int fd_ = -1;
};

// A port that refuses connections (bound once, then released).
uint16_t UnusedPort();

// A socket listening on a free port that never accepts or answers.
class SilentListener {
 public:
  SilentListener();
  ~SilentListener();
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

// "http://127.0.0.1:PORT" of a started server.
std::string Base(const HttpServer& server);

// The bytes of `s`, as a body.
Bytes ToBytes(std::string_view s);

// A started server on a free loopback port with two routes: GET /v1/health answers {"status":"ok"},
// POST /echo answers the body it got (application/octet-stream). A failed start fails the test.
std::unique_ptr<HttpServer> EchoServer(HttpServerOptions options = {});

// Polls `condition` until true or `timeout`; returns its last value.
bool WaitFor(const std::function<bool()>& condition,
             std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace dmoe::net::testing

#endif  // DMOE_TESTS_NET_TEST_UTIL_H_
