#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "net/http_client.h"
#include "net/http_server.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::seconds;
using testing::ToBytes;
using testing::WaitFor;

std::string WsUrl(const HttpServer& s) {
  return "ws://127.0.0.1:" + std::to_string(s.port()) + "/v1/ws";
}
Deadline In(std::chrono::milliseconds d) { return std::chrono::steady_clock::now() + d; }
std::string ToString(const Bytes& b) { return std::string(b.begin(), b.end()); }

std::shared_ptr<WsConnection> ConnectOrDie(WsClient& client, const std::string& url,
                                           WsHandlers handlers, Headers headers = {}) {
  std::promise<Result<std::shared_ptr<WsConnection>>> p;
  client.Connect(url, std::move(headers), std::move(handlers), In(seconds(5)),
                 [&](Result<std::shared_ptr<WsConnection>> r) { p.set_value(std::move(r)); });
  auto r = p.get_future().get();
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : nullptr;
}

// The server collects kCount requests, then a worker thread answers them in reverse order: many
// requests in flight on one connection, answers out of order, sent from a non-network thread.
TEST(WebSocketTest, ManyInFlightAnsweredOutOfOrder) {
  constexpr int kCount = 200;
  HttpServer server({});
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::shared_ptr<WsConnection>, Bytes>> pending;
  int refused = 0;
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [&](const std::shared_ptr<WsConnection>& conn, Bytes msg) {
                           std::lock_guard<std::mutex> lock(mu);
                           if (!conn->TryBeginRequest(kCount)) {
                             ++refused;
                             return;
                           }
                           pending.emplace_back(conn, std::move(msg));
                           cv.notify_all();
                         }});
  ASSERT_TRUE(server.Start().ok());
  std::thread worker([&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return pending.size() == kCount; });
    for (auto it = pending.rbegin(); it != pending.rend(); ++it) {
      Bytes reply = ToBytes("re:" + ToString(it->second));
      EXPECT_TRUE(it->first->Send(std::move(reply)).ok());
      it->first->EndRequest();
    }
  });
  WsClient client;
  std::mutex client_mu;
  std::vector<std::string> answers;
  auto conn = ConnectOrDie(client, WsUrl(server),
                           {.on_message = [&](const std::shared_ptr<WsConnection>&, Bytes msg) {
                             std::lock_guard<std::mutex> lock(client_mu);
                             answers.push_back(ToString(msg));
                           }});
  ASSERT_TRUE(conn);
  for (int i = 0; i < kCount; ++i) ASSERT_TRUE(conn->Send(ToBytes(std::to_string(i))).ok());
  worker.join();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(client_mu);
    return answers.size() == kCount;
  }));
  EXPECT_EQ(answers.front(), "re:" + std::to_string(kCount - 1));
  EXPECT_EQ(answers.back(), "re:0");
  EXPECT_EQ(std::set<std::string>(answers.begin(), answers.end()).size(), size_t{kCount});
  EXPECT_EQ(refused, 0);
}

TEST(WebSocketTest, OversizedMessageClosesWithPayloadTooLarge) {
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  HttpServer server(options);
  std::promise<Status> server_closed;
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [](const std::shared_ptr<WsConnection>& c,
                                           Bytes m) { c->Send(std::move(m)).IgnoreError(); },
                          .on_close = [&](const std::shared_ptr<WsConnection>&,
                                          const Status& s) { server_closed.set_value(s); }});
  ASSERT_TRUE(server.Start().ok());
  WsClient client;
  std::promise<Status> client_closed;
  std::promise<void> echoed;
  auto conn = ConnectOrDie(
      client, WsUrl(server),
      {.on_message = [&](const std::shared_ptr<WsConnection>&, Bytes) { echoed.set_value(); },
       .on_close = [&](const std::shared_ptr<WsConnection>&,
                       const Status& s) { client_closed.set_value(s); }});
  ASSERT_TRUE(conn);
  ASSERT_TRUE(conn->Send(Bytes(1000, 1)).ok());  // Under the limit: echoed.
  ASSERT_EQ(echoed.get_future().wait_for(seconds(5)), std::future_status::ready);
  ASSERT_TRUE(conn->Send(Bytes(2048, 1)).ok());
  auto s = server_closed.get_future();
  ASSERT_EQ(s.wait_for(seconds(5)), std::future_status::ready);
  EXPECT_EQ(s.get().code(), Code::kPayloadTooLarge);
  auto c = client_closed.get_future();
  ASSERT_EQ(c.wait_for(seconds(5)), std::future_status::ready);
  EXPECT_FALSE(conn->is_open());
}

TEST(WebSocketTest, PreUpgradeCheckRefusesWithStatus) {
  HttpServer server({});
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [](const std::shared_ptr<WsConnection>&, Bytes) {}},
                         [](const RequestHead& head) -> Status {
                           if (head.headers.Get("X-DMoE-Key") == "good") return Status::Ok();
                           return UnauthenticatedError("bad key");
                         });
  ASSERT_TRUE(server.Start().ok());
  WsClient client;
  std::promise<Result<std::shared_ptr<WsConnection>>> p;
  client.Connect(WsUrl(server), {{"X-DMoE-Key", "bad"}}, {}, In(seconds(5)),
                 [&](Result<std::shared_ptr<WsConnection>> r) { p.set_value(std::move(r)); });
  auto r = p.get_future().get();
  EXPECT_EQ(r.status(), UnauthenticatedError("bad key"));
  auto good = ConnectOrDie(client, WsUrl(server), {}, {{"X-DMoE-Key", "good"}});
  ASSERT_TRUE(good);
  EXPECT_EQ(good->head().headers.Get("X-DMoE-Key").value_or(""), "good");
}

TEST(WebSocketTest, GetSharedHandsOutOneConnection) {
  HttpServer server({});
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [](const std::shared_ptr<WsConnection>&, Bytes) {}});
  ASSERT_TRUE(server.Start().ok());
  WsClient client;
  std::vector<std::future<Result<std::shared_ptr<WsConnection>>>> futures;
  std::vector<std::shared_ptr<std::promise<Result<std::shared_ptr<WsConnection>>>>> promises;
  for (int i = 0; i < 8; ++i) {
    auto p = std::make_shared<std::promise<Result<std::shared_ptr<WsConnection>>>>();
    futures.push_back(p->get_future());
    client.GetShared(WsUrl(server), {}, {}, In(seconds(5)),
                     [p](Result<std::shared_ptr<WsConnection>> r) { p->set_value(std::move(r)); });
    promises.push_back(p);
  }
  std::set<WsConnection*> distinct;
  for (auto& f : futures) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    distinct.insert(r->get());
  }
  EXPECT_EQ(distinct.size(), 1u);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

TEST(WebSocketTest, ConnectRefusedIsUnavailable) {
  WsClient client;
  std::promise<Result<std::shared_ptr<WsConnection>>> p;
  client.Connect("ws://127.0.0.1:" + std::to_string(testing::UnusedPort()) + "/v1/ws", {}, {},
                 In(seconds(5)),
                 [&](Result<std::shared_ptr<WsConnection>> r) { p.set_value(std::move(r)); });
  EXPECT_EQ(p.get_future().get().status().code(), Code::kUnavailable);
}

TEST(WebSocketTest, StopClosesWebSockets) {
  auto server = std::make_unique<HttpServer>(HttpServerOptions{});
  server->HandleWebSocket("/v1/ws",
                          {.on_message = [](const std::shared_ptr<WsConnection>&, Bytes) {}});
  ASSERT_TRUE(server->Start().ok());
  WsClient client;
  std::promise<Status> closed;
  auto conn = ConnectOrDie(client, WsUrl(*server),
                           {.on_close = [&](const std::shared_ptr<WsConnection>&, const Status& s) {
                             closed.set_value(s);
                           }});
  ASSERT_TRUE(conn);
  server->Stop(seconds(5));
  auto f = closed.get_future();
  ASSERT_EQ(f.wait_for(seconds(5)), std::future_status::ready);
  Status why = f.get();
  EXPECT_TRUE(why.ok()) << why.ToString();
  EXPECT_EQ(conn->Send(ToBytes("late")).code(), Code::kUnavailable);
}

TEST(WebSocketTest, InFlightCounterCapsAtLimit) {
  HttpServer server({});
  std::promise<std::shared_ptr<WsConnection>> opened;
  server.HandleWebSocket(
      "/v1/ws", {.on_open = [&](const std::shared_ptr<WsConnection>& c) { opened.set_value(c); },
                 .on_message = [](const std::shared_ptr<WsConnection>&, Bytes) {}});
  ASSERT_TRUE(server.Start().ok());
  WsClient client;
  auto conn = ConnectOrDie(client, WsUrl(server), {});
  auto s = opened.get_future().get();
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(s->TryBeginRequest(64));
  EXPECT_FALSE(s->TryBeginRequest(64));
  s->EndRequest();
  EXPECT_TRUE(s->TryBeginRequest(64));
  EXPECT_EQ(s->in_flight(), 64);
}

// With a request budget, a message that arrives while begun requests hold the budget is read only
// up to its start; the rest waits in the socket until one of them ends, then arrives whole. A
// message the handler does not begin a request for counts only while on_message runs.
TEST(WebSocketTest, RequestBudgetLeavesAMessageUnreadUntilARequestEnds) {
  constexpr size_t kMessage = 600 << 10;
  HttpServerOptions options;
  options.max_held_request_bytes = 512 << 10;
  HttpServer server(options);
  std::mutex mu;
  std::vector<std::pair<std::shared_ptr<WsConnection>, Bytes>> begun;
  int received = 0;
  server.HandleWebSocket("/v1/ws",
                         {.on_message = [&](const std::shared_ptr<WsConnection>& conn, Bytes msg) {
                           std::lock_guard<std::mutex> lock(mu);
                           ++received;
                           if (msg.size() < kMessage) return;
                           EXPECT_TRUE(conn->TryBeginRequest(8));
                           begun.emplace_back(conn, std::move(msg));
                         }});
  ASSERT_TRUE(server.Start().ok());
  auto count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return received;
  };
  WsClient client;
  auto first = ConnectOrDie(client, WsUrl(server), {});
  auto second = ConnectOrDie(client, WsUrl(server), {});
  ASSERT_TRUE(first && second);
  ASSERT_TRUE(first->Send(Bytes(kMessage, 1)).ok());
  ASSERT_TRUE(WaitFor([&] { return count() == 1; }));
  EXPECT_EQ(server.held_request_bytes(), kMessage);
  ASSERT_TRUE(second->Send(Bytes(kMessage, 2)).ok());
  ASSERT_TRUE(WaitFor([&] { return server.requests_waiting() == 1; }));
  EXPECT_EQ(count(), 1);
  {
    std::lock_guard<std::mutex> lock(mu);
    begun[0].first->EndRequest();
  }
  ASSERT_TRUE(WaitFor([&] { return count() == 2; }));
  EXPECT_EQ(server.held_request_bytes(), kMessage);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(begun[1].second, Bytes(kMessage, 2));
    begun[1].first->EndRequest();
  }
  EXPECT_TRUE(WaitFor([&] { return server.held_request_bytes() == 0; }));
  ASSERT_TRUE(first->Send(ToBytes("small")).ok());
  ASSERT_TRUE(WaitFor([&] { return count() == 3; }));
  EXPECT_TRUE(WaitFor([&] { return server.held_request_bytes() == 0; }));
  first->Close();
  second->Close();
}

}  // namespace
}  // namespace dmoe::net
