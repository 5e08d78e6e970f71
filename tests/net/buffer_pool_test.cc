#include "net/buffer_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <mutex>
#include <vector>

#include "net/http_client.h"
#include "net/http_server.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::seconds;

constexpr size_t kMiB = 1 << 20;

BufferPool SmallPool() { return BufferPool({.min_bytes = 1024, .max_idle_bytes = 3 * kMiB}); }

Bytes Filled(size_t n, uint8_t value) { return Bytes(n, value); }

TEST(BufferPoolTest, AGivenBufferIsTakenAgainEmptyWithItsMemory) {
  BufferPool pool = SmallPool();
  Bytes b = Filled(kMiB, 7);
  const uint8_t* memory = b.data();
  pool.Give(std::move(b));
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(pool.stats().idle_buffers, 1);
  EXPECT_EQ(pool.stats().idle_bytes, static_cast<int64_t>(kMiB));

  Bytes again = pool.Take(kMiB / 2);
  EXPECT_EQ(again.data(), memory);
  EXPECT_TRUE(again.empty());
  EXPECT_GE(again.capacity(), kMiB);
  EXPECT_EQ(pool.stats().reused, 1);
  EXPECT_EQ(pool.stats().idle_bytes, 0);
}

TEST(BufferPoolTest, TakePicksTheSmallestBufferLargeEnough) {
  BufferPool pool = SmallPool();
  Bytes small = Filled(kMiB / 4, 1), middle = Filled(kMiB / 2, 2), large = Filled(kMiB, 3);
  const uint8_t* middle_memory = middle.data();
  const uint8_t* large_memory = large.data();
  pool.Give(std::move(large));
  pool.Give(std::move(small));
  pool.Give(std::move(middle));
  EXPECT_EQ(pool.Take(kMiB / 3).data(), middle_memory);
  EXPECT_EQ(pool.Take(kMiB / 3).data(), large_memory);
  // Only the quarter MiB is left: a half MiB is a miss, served by a new buffer of that capacity.
  Bytes fresh = pool.Take(kMiB / 2);
  EXPECT_GE(fresh.capacity(), kMiB / 2);
  EXPECT_EQ(pool.stats().missed, 1);
  EXPECT_EQ(pool.stats().idle_buffers, 1);
}

TEST(BufferPoolTest, IdleBytesStayWithinTheBoundByFreeingTheLeastRecentlyGiven) {
  BufferPool pool = SmallPool();  // 3 MiB idle at most
  std::vector<const uint8_t*> memory;
  for (int i = 0; i < 4; ++i) {
    Bytes b = Filled(kMiB, static_cast<uint8_t>(i));
    memory.push_back(b.data());
    pool.Give(std::move(b));
    EXPECT_LE(pool.stats().idle_bytes, static_cast<int64_t>(3 * kMiB));
  }
  EXPECT_EQ(pool.stats().idle_buffers, 3);
  // The first one given back was freed; the three most recent remain.
  std::vector<const uint8_t*> taken;
  for (int i = 0; i < 3; ++i) taken.push_back(pool.Take(kMiB).data());
  for (int i = 1; i < 4; ++i)
    EXPECT_NE(std::find(taken.begin(), taken.end(), memory[i]), taken.end());
  EXPECT_EQ(pool.stats().idle_buffers, 0);
}

TEST(BufferPoolTest, SmallAndOversizedBuffersAreNotKept) {
  BufferPool pool = SmallPool();
  pool.Give(Filled(512, 1));       // below min_bytes: malloc keeps small blocks well itself
  pool.Give(Filled(4 * kMiB, 1));  // larger than the whole idle bound
  EXPECT_EQ(pool.stats().idle_buffers, 0);
  EXPECT_EQ(pool.stats().idle_bytes, 0);
  // Small takes are not counted as misses either.
  EXPECT_GE(pool.Take(100).capacity(), 100u);
  EXPECT_EQ(pool.stats().missed, 0);
}

// The wiring: a server and a client lent one pool, exchanging bodies of a MiB, reuse its buffers
// (request body read by the server, response body written by it, request body sent by the client,
// response body read by the client) instead of mapping fresh memory for every one.
TEST(BufferPoolTest, HttpBodiesOfRepeatedCallsComeFromTheLentPool) {
  BufferPool pool;
  HttpServer server({.buffer_pool = &pool});
  server.Handle("POST", "/echo", [](Request req, Responder respond) {
    respond(Response::Binary(200, "application/octet-stream", std::move(req.body)));
  });
  ASSERT_TRUE(server.Start().ok());
  HttpClient client({.buffer_pool = &pool});
  EXPECT_EQ(&server.buffer_pool(), &pool);
  EXPECT_EQ(&client.buffer_pool(), &pool);
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/echo";
  auto call = [&](uint8_t value) {
    Bytes body = pool.Take(kMiB);
    body.assign(kMiB, value);
    auto r = client.Fetch("POST", url, {}, std::move(body), seconds(10));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->body.size(), kMiB);
    EXPECT_EQ(r->body.front(), value);
    EXPECT_EQ(r->body.back(), value);
    pool.Give(std::move(r->body));
  };
  call(1);  // warms the pool
  const BufferPoolStats before = pool.stats();
  for (uint8_t i = 2; i < 12; ++i) call(i);
  const BufferPoolStats after = pool.stats();
  // Per call: the client's request body, the server's request body (echoed as its response) and
  // the client's response body are taken; all of them are given back. The server gives its
  // response body back after the client has it, so the next call may rarely find it not back yet.
  EXPECT_GE(after.reused - before.reused, 10 * 3 - 2);
  EXPECT_LE(after.missed - before.missed, 2);
}

TEST(BufferPoolTest, WebSocketMessagesOfRepeatedCallsComeFromTheLentPool) {
  BufferPool pool;
  HttpServer server({.buffer_pool = &pool});
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [](const std::shared_ptr<WsConnection>& conn, Bytes msg) {
                           EXPECT_TRUE(conn->Send(std::move(msg)).ok());
                         }});
  ASSERT_TRUE(server.Start().ok());
  WsClient client({.buffer_pool = &pool});
  EXPECT_EQ(&client.buffer_pool(), &pool);
  std::mutex mu;
  std::vector<Bytes> answers;
  std::promise<Result<std::shared_ptr<WsConnection>>> opened;
  client.Connect("ws://127.0.0.1:" + std::to_string(server.port()) + "/v1/ws", {},
                 {.on_message =
                      [&](const std::shared_ptr<WsConnection>&, Bytes msg) {
                        std::lock_guard<std::mutex> lock(mu);
                        answers.push_back(std::move(msg));
                      }},
                 std::chrono::steady_clock::now() + seconds(5),
                 [&](Result<std::shared_ptr<WsConnection>> r) { opened.set_value(std::move(r)); });
  auto conn = opened.get_future().get();
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  auto call = [&](uint8_t value) {
    Bytes message = pool.Take(kMiB);
    message.assign(kMiB, value);
    ASSERT_TRUE((*conn)->Send(std::move(message)).ok());
    ASSERT_TRUE(testing::WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu);
      return !answers.empty();
    }));
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(answers.back().size(), kMiB);
    EXPECT_EQ(answers.back().front(), value);
    EXPECT_EQ(answers.back().back(), value);
    pool.Give(std::move(answers.back()));
    answers.clear();
  };
  call(1);
  call(2);  // the first message sized the read buffers of both ends
  const BufferPoolStats before = pool.stats();
  for (uint8_t i = 3; i < 13; ++i) call(i);
  const BufferPoolStats after = pool.stats();
  // Per call: the client's message, the server's read buffer (sent back as the answer) and the
  // client's read buffer; as above, a buffer may rarely be given back after the next call's take.
  EXPECT_GE(after.reused - before.reused, 10 * 3 - 2);
  EXPECT_LE(after.missed - before.missed, 2);
  (*conn)->Close();
}

// A server and a client lent no pool keep one each: nothing is shared between them behind the
// process's back.
TEST(BufferPoolTest, ServerAndClientLentNoPoolKeepTheirOwn) {
  HttpServer server({});
  HttpClient client;
  WsClient ws;
  EXPECT_NE(&server.buffer_pool(), &client.buffer_pool());
  EXPECT_NE(&server.buffer_pool(), &ws.buffer_pool());
  EXPECT_NE(&client.buffer_pool(), &ws.buffer_pool());
}

}  // namespace
}  // namespace dmoe::net
