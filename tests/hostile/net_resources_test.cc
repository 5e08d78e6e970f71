// Issue 12 part 4, against real processes on loopback: slow, silent and greedy clients
// (tests/hostile/rogue_client.h, connecting from 127.0.0.2) cannot exhaust a dmoe-server or a
// dmoe-router. While each attack runs, a genuine request from 127.0.0.1 is answered within 1 s and
// the process's RSS stays under a stated bound; afterwards the attacker's connections are cut.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "net/http_client.h"
#include "tests/hostile/rogue_client.h"
#include "tests/integration/server_test_util.h"
#include "tests/integration/swarm_util.h"
#include "tests/testing/process.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using integration::EncodeF32;
using integration::Pattern;
using integration::ServerClient;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr char kUid[] = "ffn.0.0";
constexpr uint64_t kMiB = 1 << 20;
// What an attack may add to a process's RSS: the held-request budget (4 MiB on the server, 16 MiB
// on the router) plus buffers for each attacking connection, with room for allocator slack. The
// attacks below declare 60 MiB bodies on up to 100 connections: 6 GB if declared lengths cost.
constexpr uint64_t kAttackRssBound = 64 * kMiB;

integration::ServerProcess StartServer(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = integration::BaseServerArgs(kUid);
  args.insert(args.end(), extra.begin(), extra.end());
  auto server = integration::StartServer(args);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  return server.ok() ? std::move(server).value() : integration::ServerProcess{};
}

std::vector<uint8_t> ForwardBody() { return EncodeF32({Pattern("x", {16, 32}, 1)}); }

// A genuine forward over HTTP and one over a WebSocket, each answered within 1 s, the HTTP one 200.
// While the requests an attacker already sent fill the expert's queue (4096 samples, shared by all
// clients), the server refuses a forward with 429 resource_exhausted, "retry later"; the genuine
// client retries as told, within the same second.
void ExpectGenuineForwardWithin1s(const std::string& endpoint) {
  ServerClient client(endpoint);
  auto start = Clock::now();
  std::optional<Result<net::Response>> r;
  testing::PollUntil(
      [&] {
        r = client.Forward(kUid, ForwardBody());
        return !r->ok() || (*r)->status != 429;
      },
      milliseconds(1000), milliseconds(10));
  auto took = Clock::now() - start;
  ASSERT_TRUE(r->ok()) << r->status().ToString();
  EXPECT_EQ((*r)->status, 200) << (*r)->body_view();
  EXPECT_LT(took, seconds(1));

  start = Clock::now();
  auto ws = integration::WsSession::Open(endpoint);
  ASSERT_TRUE(ws.ok()) << ws.status().ToString();
  auto answer = (*ws)->Call(
      EncodeF32({Pattern("x", {16, 32}, 2)}, {{"id", "g"}, {"op", "forward"}, {"uid", kUid}}));
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  EXPECT_LT(Clock::now() - start, seconds(1));
}

// 20 connections that declare a 60 MiB forward body and send 4 KiB of it, 5 chunked bodies that
// never end, and a WebSocket that sends 4 KiB of a 60 MiB message: a forward beside them answers
// within 1 s (on main it waited > 15 s), RSS stays bounded, and the minimum upload rate cuts every
// attacking connection (bodies answered 504 deadline_exceeded).
TEST(NetHostileServer, SilentUploadsDoNotStallAForward) {
  auto server = StartServer();
  ASSERT_TRUE(server.process);
  ExpectGenuineForwardWithin1s(server.endpoint);  // Warm: the first forward loads kernels.
  const uint64_t rss_before = ResidentBytes(server.process->pid());
  ASSERT_GT(rss_before, 0u);

  RogueClient rogue(server.endpoint);
  const std::string path = std::string("/v1/experts/") + kUid + "/forward";
  EXPECT_EQ(rogue.SilentUploads(20, path, 60 * kMiB, 4096), 20);
  EXPECT_EQ(rogue.EndlessChunked(5, path, 4096), 5);
  EXPECT_EQ(rogue.HalfWebSocketMessages(1, 60 * kMiB, 4096), 1);
  ExpectGenuineForwardWithin1s(server.endpoint);
  EXPECT_LT(ResidentBytes(server.process->pid()), rss_before + kAttackRssBound);

  // Cut after the 1 s grace at 64 KiB/s; 10 s leaves room for a loaded machine.
  EXPECT_TRUE(rogue.WaitOpenAtMost(0, seconds(10))) << rogue.open() << " still open";
  EXPECT_EQ(rogue.answered("HTTP/1.1 504", "deadline_exceeded"), 25u);
  ExpectGenuineForwardWithin1s(server.endpoint);
}

// 1,000 connections from one address: past --max-connections-per-ip each is answered 503 with
// Retry-After and closed, and a client from another address is served within 1 s.
TEST(NetHostileServer, ThousandConnectionsAreCappedPerIp) {
  auto server = StartServer({"--max-connections-per-ip", "64"});
  ASSERT_TRUE(server.process);
  ExpectGenuineForwardWithin1s(server.endpoint);
  const uint64_t rss_before = ResidentBytes(server.process->pid());

  RogueClient rogue(server.endpoint);
  EXPECT_EQ(rogue.IdleConnections(1000), 1000);
  EXPECT_TRUE(rogue.WaitOpenAtMost(64, seconds(15))) << rogue.open() << " still open";
  EXPECT_EQ(rogue.open(), 64u);
  EXPECT_EQ(rogue.answered("HTTP/1.1 503", "Retry-After: 1"), 1000u - 64u);
  ExpectGenuineForwardWithin1s(server.endpoint);
  EXPECT_LT(ResidentBytes(server.process->pid()), rss_before + kAttackRssBound);
}

// A WebSocket client that sends 2,000 forwards and never reads: the server stops reading its
// requests once answers pile up, so its memory stays bounded and others are served.
TEST(NetHostileServer, UnreadWebSocketAnswersAreBounded) {
  auto server = StartServer();
  ASSERT_TRUE(server.process);
  ExpectGenuineForwardWithin1s(server.endpoint);
  const uint64_t rss_before = ResidentBytes(server.process->pid());

  RogueClient rogue(server.endpoint);
  // 64 KiB requests whose answers are 64 KiB: 128 MiB of answers if all were queued.
  auto request =
      EncodeF32({Pattern("x", {512, 32}, 3)}, {{"id", "r"}, {"op", "forward"}, {"uid", kUid}});
  EXPECT_EQ(rogue.UnreadWebSocket(1, request, 2000), 1);
  ExpectGenuineForwardWithin1s(server.endpoint);
  EXPECT_LT(ResidentBytes(server.process->pid()), rss_before + kAttackRssBound);
}

struct RouterProcess {
  integration::DhtProcess dht;
  std::unique_ptr<testing::Process> process;
  std::string endpoint;
};

RouterProcess StartRouter(const testing::TempDir& dir) {
  RouterProcess r;
  auto dht = integration::StartDht();
  EXPECT_TRUE(dht.ok()) << dht.status().ToString();
  if (!dht.ok()) return r;
  r.dht = std::move(dht).value();
  auto router =
      testing::StartRouter({"--dht", r.dht.address, "--db", dir.Sub("router"), "--threads", "1"});
  EXPECT_TRUE(router.ok()) << router.status().ToString();
  if (!router.ok()) return r;
  r.process = std::move(router->process);
  r.endpoint = router->endpoint;
  return r;
}

void ExpectRouterHealthWithin1s(const std::string& endpoint) {
  auto start = Clock::now();
  auto r = net::Fetch("GET", endpoint + "/v1/health", {}, {}, seconds(5));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_LT(Clock::now() - start, seconds(1));
}

// 100 connections that send `POST /v1/models/x/infer` with `Content-Length: 60 MiB` and nothing
// else took the router from 166 MiB to 1.5 GiB and stopped its health answers: now they hold
// nothing, /v1/health answers within 1 s, and they are cut after the grace.
TEST(NetHostileRouter, HeaderOnlyInferencesHoldNothing) {
  testing::TempDir dir("dmoe-net-hostile");
  RouterProcess router = StartRouter(dir);
  ASSERT_TRUE(router.process && !router.endpoint.empty());
  ExpectRouterHealthWithin1s(router.endpoint);
  const uint64_t rss_before = ResidentBytes(router.process->pid());
  ASSERT_GT(rss_before, 0u);

  RogueClient rogue(router.endpoint);
  EXPECT_EQ(rogue.SilentUploads(100, "/v1/models/x/infer", 60 * kMiB, 0), 100);
  ExpectRouterHealthWithin1s(router.endpoint);
  EXPECT_LT(ResidentBytes(router.process->pid()), rss_before + kAttackRssBound);
  EXPECT_TRUE(rogue.WaitOpenAtMost(0, seconds(10))) << rogue.open() << " still open";
  // Every one is told why it was cut. (A stale readiness wake once made the router take a few of
  // them for closed peers and close them without the 504: see AwaitFirstBytes.)
  EXPECT_EQ(rogue.answered("HTTP/1.1 504", "deadline_exceeded"), 100u);
  ExpectRouterHealthWithin1s(router.endpoint);
}

// The router caps connections per IP as the server does.
TEST(NetHostileRouter, ConnectionsArePerIpCapped) {
  testing::TempDir dir("dmoe-net-hostile");
  RouterProcess router = StartRouter(dir);
  ASSERT_TRUE(router.process && !router.endpoint.empty());
  RogueClient rogue(router.endpoint);
  EXPECT_EQ(rogue.IdleConnections(300), 300);
  // The default cap is 256 per IP.
  EXPECT_TRUE(rogue.WaitOpenAtMost(256, seconds(10))) << rogue.open() << " still open";
  EXPECT_EQ(rogue.answered("HTTP/1.1 503", "Retry-After: 1"), 300u - 256u);
  ExpectRouterHealthWithin1s(router.endpoint);
}

}  // namespace
}  // namespace dmoe::hostile
