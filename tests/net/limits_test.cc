// The server's fair-resource limits (issue 12): a body that does not arrive holds nothing, slow
// uploads are cut, connections are capped, and answers a WebSocket client does not read count
// against it. Misbehaving clients are raw sockets (tests/net/test_util.h).
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "net/http_client.h"
#include "net/http_server.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Base;
using testing::EchoServer;
using testing::RawSocket;
using testing::WaitFor;

std::string PostHead(uint64_t length) {
  return "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(length) + "\r\n\r\n";
}

// A client WebSocket frame header for a binary message of `length` bytes, masked with a zero key
// (so the payload goes as is).
std::string FrameHead(uint64_t length) {
  std::string h;
  h.push_back(static_cast<char>(0x82));
  if (length < 126) {
    h.push_back(static_cast<char>(0x80 | length));
  } else {
    h.push_back(static_cast<char>(0x80 | 127));
    for (int i = 7; i >= 0; --i) h.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  }
  h.append(4, '\0');
  return h;
}

// Opens a WebSocket on a raw socket; true when the server answered 101.
bool RawUpgrade(RawSocket& s) {
  if (!s.Send("GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")) {
    return false;
  }
  std::string head = s.ReadHead(seconds(5));
  EXPECT_NE(head.find(" 101 "), std::string::npos) << head;
  return head.find(" 101 ") != std::string::npos;
}

// 20 connections declare a 60 MiB body and send 4 KiB of it: they hold about what they sent, and a
// genuine request beside them is answered at once.
TEST(NetLimitsTest, DeclaredLengthHoldsOnlyWhatArrived) {
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  options.max_body_bytes = 64ull << 20;
  auto server = EchoServer(options);
  std::vector<std::unique_ptr<RawSocket>> rogues;
  for (int i = 0; i < 20; ++i) {
    rogues.push_back(std::make_unique<RawSocket>(server->port()));
    ASSERT_TRUE(rogues.back()->Send(PostHead(60ull << 20) + std::string(4096, 'r')));
  }
  ASSERT_TRUE(WaitFor([&] { return server->held_request_bytes() >= 20 * 4096; }));
  // At most twice what arrived: the window after the bytes that came.
  EXPECT_LE(server->held_request_bytes(), 20u * 2 * 4096 + 4096);
  EXPECT_EQ(server->requests_waiting(), 0u);
  auto start = std::chrono::steady_clock::now();
  auto r = Fetch("POST", Base(*server) + "/echo", {}, Bytes(256 << 10, 9), seconds(5));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body.size(), 256u << 10);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(1));
}

// A body slower than the minimum rate is answered 504 deadline_exceeded and closed after the grace;
// it gives back what it held.
TEST(NetLimitsTest, SlowBodyIsCutByTheMinimumRate) {
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  options.min_upload_bytes_per_second = 64 << 10;
  options.min_upload_grace = milliseconds(300);
  auto server = EchoServer(options);
  auto start = std::chrono::steady_clock::now();
  RawSocket slow(server->port());
  ASSERT_TRUE(slow.Send(PostHead(1 << 20) + std::string(1024, 's')));
  bool closed = false;
  std::string answer = slow.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(closed);
  EXPECT_NE(answer.find("HTTP/1.1 504"), std::string::npos) << answer;
  EXPECT_NE(answer.find("below the minimum of 65536 bytes/s"), std::string::npos) << answer;
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(2));
  EXPECT_EQ(server->slow_clients_cut(), 1u);
  EXPECT_TRUE(WaitFor([&] { return server->held_request_bytes() == 0; }));
}

// A fast sender is not cut, whatever its size, and 0 turns the check off.
TEST(NetLimitsTest, FastBodyAndDisabledCheckPass) {
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  options.min_upload_grace = milliseconds(0);
  auto server = EchoServer(options);
  auto r = Fetch("POST", Base(*server) + "/echo", {}, Bytes(8 << 20, 3), seconds(10));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, Bytes(8 << 20, 3));
  EXPECT_EQ(server->slow_clients_cut(), 0u);

  options.min_upload_bytes_per_second = 0;
  options.read_timeout = seconds(30);
  auto lenient = EchoServer(options);
  RawSocket slow(lenient->port());
  ASSERT_TRUE(slow.Send(PostHead(2048) + std::string(1024, 's')));
  // Well past the grace and many checks: still reading.
  EXPECT_EQ(slow.ReadUntilClose(milliseconds(700)), "");
  ASSERT_TRUE(slow.Send(std::string(1024, 't')));
  std::string answer = slow.ReadHead(seconds(5));
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  EXPECT_EQ(lenient->slow_clients_cut(), 0u);
}

// Several bodies larger than their share of the budget, read at once, all complete: windows never
// deadlock (the oldest parked body goes on).
TEST(NetLimitsTest, GrowingBodiesDoNotDeadlock) {
  HttpServerOptions options;
  options.max_held_request_bytes = 256 << 10;
  options.threads = 4;
  auto server = EchoServer(options);
  std::vector<std::future<Result<Response>>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return Fetch("POST", Base(*server) + "/echo", {}, Bytes(2 << 20, static_cast<uint8_t>(i)),
                   seconds(15));
    }));
  }
  for (int i = 0; i < 6; ++i) {
    auto r = calls[i].get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->body, Bytes(2 << 20, static_cast<uint8_t>(i)));
  }
  EXPECT_TRUE(WaitFor([&] { return server->held_request_bytes() == 0; }));
}

// A chunked body is counted while it is read, not after.
TEST(NetLimitsTest, ChunkedBodyIsCountedWhileRead) {
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  auto server = EchoServer(options);
  RawSocket s(server->port());
  ASSERT_TRUE(
      s.Send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "1000\r\n" +
             std::string(4096, 'c') + "\r\n"));
  ASSERT_TRUE(WaitFor([&] { return server->held_request_bytes() >= 4096; }));
  EXPECT_LE(server->held_request_bytes(), 3u * 4096 + 64);
  ASSERT_TRUE(s.Send("0\r\n\r\n"));
  std::string answer = s.ReadHead(seconds(5));
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  EXPECT_NE(answer.find("Content-Length: 4096"), std::string::npos) << answer;
}

// Past the per-IP cap a connection is answered 503 with Retry-After and closed; a slot given back
// is taken again.
TEST(NetLimitsTest, PerIpCapAnswers503WithRetryAfter) {
  HttpServerOptions options;
  options.max_connections_per_ip = 2;
  auto server = EchoServer(options);
  auto first = std::make_unique<RawSocket>(server->port());
  RawSocket second(server->port());
  ASSERT_TRUE(WaitFor([&] { return server->open_connections() == 2; }));
  RawSocket third(server->port());
  ASSERT_TRUE(third.Send("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"));
  bool closed = false;
  std::string answer = third.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(closed);
  EXPECT_NE(answer.find("HTTP/1.1 503"), std::string::npos) << answer;
  EXPECT_NE(answer.find("Retry-After: 1"), std::string::npos) << answer;
  EXPECT_NE(answer.find("\"unavailable\""), std::string::npos) << answer;
  EXPECT_EQ(server->refused_connections(), 1u);
  first.reset();
  ASSERT_TRUE(WaitFor([&] { return server->open_connections() == 1; }));
  auto r = Fetch("GET", Base(*server) + "/v1/health", {}, {}, seconds(5));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
}

// The total cap counts WebSockets too.
TEST(NetLimitsTest, TotalCapCountsWebSockets) {
  HttpServerOptions options;
  options.max_connections = 1;
  options.max_connections_per_ip = 0;
  HttpServer server(options);
  server.HandleWebSocket("/v1/ws", {});
  server.Handle("GET", "/v1/health", [](Request, Responder respond) {
    respond(Response::Json(200, R"({"status":"ok"})"));
  });
  ASSERT_TRUE(server.Start().ok());
  RawSocket ws(server.port());
  ASSERT_TRUE(RawUpgrade(ws));
  auto r = Fetch("GET", Base(server) + "/v1/health", {}, {}, seconds(5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_NE(r.status().message().find("limit of 1 connections"), std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(server.refused_connections(), 1u);
}

// Half a WebSocket message, then silence: the connection is cut by the minimum rate and gives its
// budget back.
TEST(NetLimitsTest, PartialWebSocketMessageIsCut) {
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  options.min_upload_grace = milliseconds(300);
  HttpServer server(options);
  std::atomic<int> closed_deadline{0};
  server.HandleWebSocket("/v1/ws",
                         {.on_close = [&](const std::shared_ptr<WsConnection>&, const Status& s) {
                           if (s.code() == Code::kDeadlineExceeded) ++closed_deadline;
                         }});
  ASSERT_TRUE(server.Start().ok());
  RawSocket s(server.port());
  ASSERT_TRUE(RawUpgrade(s));
  ASSERT_TRUE(s.Send(FrameHead(1 << 20) + std::string(8192, 'h')));
  ASSERT_TRUE(WaitFor([&] { return server.held_request_bytes() >= 8192; }));
  EXPECT_LE(server.held_request_bytes(), 2u * 8192 + 1024);
  bool closed = false;
  s.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(WaitFor([&] { return closed_deadline.load() == 1; }));
  EXPECT_EQ(server.slow_clients_cut(), 1u);
  EXPECT_TRUE(WaitFor([&] { return server.held_request_bytes() == 0; }));
}

// A client that sends requests and never reads the answers: once ws_max_queued_bytes of answers
// wait, its requests are no longer read, and the stalled write closes it.
TEST(NetLimitsTest, UnreadWebSocketAnswersStopReadingThenClose) {
  HttpServerOptions options;
  options.ws_max_queued_bytes = 1 << 20;
  options.write_timeout = milliseconds(500);
  HttpServer server(options);
  std::atomic<int> received{0};
  std::atomic<int> closed_deadline{0};
  server.HandleWebSocket("/v1/ws", {.on_message =
                                        [&](const std::shared_ptr<WsConnection>& conn, Bytes) {
                                          ++received;
                                          (void)conn->Send(Bytes(256 << 10, 1));
                                        },
                                    .on_close =
                                        [&](const std::shared_ptr<WsConnection>&, const Status& s) {
                                          if (s.code() == Code::kDeadlineExceeded)
                                            ++closed_deadline;
                                        }});
  ASSERT_TRUE(server.Start().ok());
  RawSocket s(server.port());
  ASSERT_TRUE(RawUpgrade(s));
  constexpr int kRequests = 400;  // 100 MiB of answers, far more than the socket buffers hold.
  std::string requests;
  for (int i = 0; i < kRequests; ++i) requests += FrameHead(4) + "ping";
  ASSERT_TRUE(s.Send(requests));
  ASSERT_TRUE(WaitFor([&] { return closed_deadline.load() == 1; }, seconds(10)));
  EXPECT_LT(received.load(), kRequests);
  EXPECT_EQ(server.slow_clients_cut(), 1u);
  EXPECT_TRUE(WaitFor([&] { return server.open_connections() == 0; }));
}

}  // namespace
}  // namespace dmoe::net
