#include "net/http_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "net/http_client.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Base;
using testing::EchoServer;
using testing::RawSocket;
using testing::ToBytes;
using testing::WaitFor;

TEST(HttpServerTest, GetAndPostRoundTrip) {
  auto server = EchoServer();
  auto get = Fetch("GET", Base(*server) + "/v1/health");
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->content_type, "application/json");
  EXPECT_EQ(get->body_view(), R"({"status":"ok"})");
  auto post = Fetch("POST", Base(*server) + "/echo", {}, ToBytes("hello body"));
  ASSERT_TRUE(post.ok()) << post.status().ToString();
  EXPECT_EQ(post->body_view(), "hello body");
}

TEST(HttpServerTest, KeepAliveReusesOneConnection) {
  auto server = EchoServer();
  HttpClient client;
  for (int i = 0; i < 10; ++i) {
    auto r =
        client.Fetch("POST", Base(*server) + "/echo", {}, ToBytes(std::to_string(i)), seconds(5));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->body_view(), std::to_string(i));
  }
  EXPECT_EQ(server->accepted_connections(), 1u);
  EXPECT_EQ(client.connections_opened(), 1u);
}

TEST(HttpServerTest, PathParamsAndQuery) {
  HttpServer server({});
  server.Handle("POST", "/v1/experts/{uid}/forward", [](Request req, Responder respond) {
    std::string text = std::string(req.Param("uid").value_or("?")) + "|" + req.query + "|" +
                       std::string(req.headers.Get("x-test").value_or("-"));
    respond(Response::Text(200, "text/plain", text));
  });
  ASSERT_TRUE(server.Start().ok());
  auto r =
      Fetch("POST", Base(server) + "/v1/experts/ffn.3.14/forward?dtype=f16", {{"X-Test", "yes"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body_view(), "ffn.3.14|dtype=f16|yes");
  auto miss = Fetch("POST", Base(server) + "/v1/experts/ffn.3.14/backward");
  EXPECT_EQ(miss.status().code(), Code::kNotFound);
}

TEST(HttpServerTest, UnknownPathIs404JsonAndWrongMethodIs405) {
  auto server = EchoServer();
  auto r = Fetch("GET", Base(*server) + "/nope", {}, {}, seconds(5), {.raw_error_responses = true});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->content_type, "application/json");
  auto body = nlohmann::json::parse(r->body_view());
  EXPECT_EQ(body["error"]["code"], "not_found");
  EXPECT_TRUE(body["error"]["message"].is_string());
  auto m =
      Fetch("DELETE", Base(*server) + "/echo", {}, {}, seconds(5), {.raw_error_responses = true});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->status, 405);
  EXPECT_EQ(m->headers.Get("allow").value_or(""), "POST");
  EXPECT_EQ(StatusFromResponse(*m).code(), Code::kInvalidArgument);
}

TEST(HttpServerTest, OversizedContentLengthIs413WithoutReadingBody) {
  HttpServerOptions options;
  options.max_body_bytes = 1 << 20;
  std::atomic<int> calls{0};
  HttpServer server(options);
  server.Handle("POST", "/echo", [&](Request, Responder respond) {
    ++calls;
    respond(Response::Json(200, "{}"));
  });
  ASSERT_TRUE(server.Start().ok());
  RawSocket sock(server.port());
  ASSERT_TRUE(sock.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"));
  bool closed = false;
  std::string answer = sock.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 413")) << answer;
  EXPECT_NE(answer.find("\"payload_too_large\""), std::string::npos) << answer;
  EXPECT_TRUE(closed);
  EXPECT_EQ(calls.load(), 0);
}

TEST(HttpServerTest, MalformedRequestIs400AndServerKeepsServing) {
  auto server = EchoServer();
  {
    RawSocket sock(server->port());
    ASSERT_TRUE(sock.Send("THIS IS NOT HTTP\r\n\r\n"));
    bool closed = false;
    std::string answer = sock.ReadUntilClose(seconds(5), &closed);
    EXPECT_TRUE(answer.starts_with("HTTP/1.1 400")) << answer;
    EXPECT_NE(answer.find("\"invalid_argument\""), std::string::npos) << answer;
    EXPECT_TRUE(closed);
  }
  {
    RawSocket sock(server->port());
    ASSERT_TRUE(sock.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"));
    std::string answer = sock.ReadUntilClose(seconds(5));
    EXPECT_TRUE(answer.starts_with("HTTP/1.1 400")) << answer;
  }
  auto r = Fetch("GET", Base(*server) + "/v1/health");
  EXPECT_TRUE(r.ok());
}

TEST(HttpServerTest, HeaderLimitIs400) {
  HttpServerOptions options;
  options.max_header_bytes = 1024;
  auto server = EchoServer(options);
  RawSocket sock(server->port());
  ASSERT_TRUE(sock.Send("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') +
                        "\r\n\r\n"));
  std::string answer = sock.ReadUntilClose(seconds(5));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 400")) << answer;
  EXPECT_NE(answer.find("1024"), std::string::npos) << answer;
}

TEST(HttpServerTest, IdleAndSlowConnectionsAreClosed) {
  HttpServerOptions options;
  options.idle_timeout = milliseconds(200);
  options.read_timeout = milliseconds(200);
  auto server = EchoServer(options);
  auto start = std::chrono::steady_clock::now();
  RawSocket idle(server->port());
  RawSocket slow(server->port());
  ASSERT_TRUE(slow.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"));
  bool idle_closed = false, slow_closed = false;
  EXPECT_EQ(idle.ReadUntilClose(seconds(5), &idle_closed), "");
  // A body cut by its deadline is told why.
  std::string cut = slow.ReadUntilClose(seconds(5), &slow_closed);
  EXPECT_NE(cut.find("HTTP/1.1 504"), std::string::npos) << cut;
  EXPECT_NE(cut.find("deadline_exceeded"), std::string::npos) << cut;
  EXPECT_TRUE(idle_closed);
  EXPECT_TRUE(slow_closed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(3));
  EXPECT_TRUE(WaitFor([&] { return server->open_connections() == 0; }));
}

// A body that follows its header only later: the server waits for its first bytes, and a readiness
// wake-up with nothing to read yet (a readiness the reactor took from epoll before the header's
// read consumed its bytes) is not taken for the client's close. That race is rare and was not seen
// here in 30 runs before the fix; NetHostileRouter.HeaderOnlyInferencesHoldNothing, where CI caught
// it, is the one with teeth. This test holds the behaviour a genuine client needs, on one server
// thread.
TEST(HttpServerTest, ABodyThatFollowsItsHeaderLaterIsRead) {
  HttpServerOptions options;
  options.threads = 1;
  auto server = EchoServer(options);
  constexpr int kConnections = 200;
  std::vector<std::unique_ptr<RawSocket>> sockets;
  for (int i = 0; i < kConnections; ++i) {
    sockets.push_back(std::make_unique<RawSocket>(server->port()));
    ASSERT_TRUE(sockets.back()->connected());
    ASSERT_TRUE(sockets.back()->Send(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\n"));
  }
  // Every header is read and its connection waits for the body.
  ASSERT_TRUE(WaitFor([&] { return server->open_connections() == kConnections; }));
  int answered = 0;
  for (auto& s : sockets) {
    if (!s->Send("abcd")) continue;
    std::string answer = s->ReadUntilClose(seconds(5));
    if (answer.rfind("HTTP/1.1 200", 0) == 0 && answer.size() >= 4 &&
        answer.substr(answer.size() - 4) == "abcd") {
      ++answered;
    }
  }
  EXPECT_EQ(answered, kConnections);
}

TEST(HttpServerTest, RoutesListsWhatWasRegistered) {
  HttpServer server(HttpServerOptions{});
  server.Handle("GET", "/v1/health", [](Request, Responder) {});
  server.Handle("POST", "/v1/experts/{uid}/forward", [](Request, Responder) {});
  server.HandleWebSocket("/v1/ws", WsHandlers{});
  EXPECT_EQ(server.routes(),
            (std::vector<std::string>{"GET /v1/health", "POST /v1/experts/{uid}/forward",
                                      "WEBSOCKET /v1/ws"}));
}

TEST(HttpServerTest, HandlerRespondsLaterFromAnotherThread) {
  HttpServer server({});
  std::promise<Responder> handed_over;
  server.Handle("GET", "/later",
                [&](Request, Responder respond) { handed_over.set_value(respond); });
  ASSERT_TRUE(server.Start().ok());
  std::thread worker([&] {
    Responder respond = handed_over.get_future().get();
    respond(Response::Text(200, "text/plain", "from the worker"));
    respond(Response::Text(500, "text/plain", "ignored: the first answer wins"));
  });
  auto r = Fetch("GET", Base(server) + "/later");
  worker.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body_view(), "from the worker");
}

TEST(HttpServerTest, DroppedResponderAnswers500AndThrowingHandlerToo) {
  HttpServer server({});
  server.Handle("GET", "/drop", [](Request, Responder) {});
  server.Handle("GET", "/throw", [](Request, Responder) { throw std::runtime_error("boom"); });
  ASSERT_TRUE(server.Start().ok());
  EXPECT_EQ(Fetch("GET", Base(server) + "/drop").status().code(), Code::kInternal);
  EXPECT_EQ(Fetch("GET", Base(server) + "/throw").status().code(), Code::kInternal);
}

TEST(HttpServerTest, ConcurrentClients) {
  HttpServerOptions options;
  options.threads = 2;
  auto server = EchoServer(options);
  HttpClient client;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        std::string text = std::to_string(t) + ":" + std::to_string(i);
        auto r = client.Fetch("POST", Base(*server) + "/echo", {}, ToBytes(text), seconds(10));
        if (r.ok() && r->body_view() == text) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16 * 50);
  EXPECT_LE(client.connections_opened(), 16u + 16u);  // Pool of 16 idle; a few extra under churn.
}

TEST(HttpServerTest, PreBodyCheckRefusesBeforeReadingBody) {
  HttpServer server({});
  std::atomic<int> calls{0};
  server.Handle(
      "POST", "/v1/experts/{uid}/backward",
      [&](Request, Responder respond) {
        ++calls;
        respond(Response::Json(200, "{}"));
      },
      [](const RequestHead& head) -> Status {
        if (!head.headers.Has("X-DMoE-Key")) return UnauthenticatedError("X-DMoE-Key is missing");
        if (head.headers.Get("Content-Type") != "application/x-safetensors") {
          return UnsupportedMediaTypeError("want application/x-safetensors");
        }
        return Status::Ok();
      });
  ASSERT_TRUE(server.Start().ok());
  // Headers only: the 1 MB body is never sent, so an answer proves the body was not awaited.
  RawSocket sock(server.port());
  ASSERT_TRUE(
      sock.Send("POST /v1/experts/a.0/backward HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 1000000\r\n\r\n"));
  std::string answer = sock.ReadUntilClose(seconds(5));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 401")) << answer;
  EXPECT_NE(answer.find("\"unauthenticated\""), std::string::npos);
  RawSocket sock2(server.port());
  ASSERT_TRUE(
      sock2.Send("POST /v1/experts/a.0/backward HTTP/1.1\r\nHost: x\r\nX-DMoE-Key: k\r\n"
                 "Content-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n"));
  EXPECT_TRUE(sock2.ReadUntilClose(seconds(5)).starts_with("HTTP/1.1 415"));
  auto good =
      Fetch("POST", Base(server) + "/v1/experts/a.0/backward",
            {{"X-DMoE-Key", "k"}, {"Content-Type", "application/x-safetensors"}}, ToBytes("x"));
  EXPECT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpServerTest, ChunkedBodyIsRead) {
  auto server = EchoServer();
  RawSocket sock(server->port());
  ASSERT_TRUE(
      sock.Send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  std::string answer = sock.ReadUntilClose(seconds(5));
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 200")) << answer;
  EXPECT_TRUE(answer.ends_with("\r\n\r\nhello world")) << answer;
}

TEST(HttpServerTest, GracefulStopFinishesRequestInFlight) {
  auto server = std::make_unique<HttpServer>(HttpServerOptions{});
  std::promise<Responder> handed_over;
  server->Handle("GET", "/slow",
                 [&](Request, Responder respond) { handed_over.set_value(respond); });
  ASSERT_TRUE(server->Start().ok());
  std::string url = Base(*server) + "/slow";
  HttpClient client;
  std::promise<Result<Response>> done;
  client.Request("GET", url, {}, {}, std::chrono::steady_clock::now() + seconds(10),
                 [&](Result<Response> r) { done.set_value(std::move(r)); });
  Responder respond = handed_over.get_future().get();  // The request is in the handler.
  std::thread stopper([&] { server->Stop(seconds(10)); });
  // New connections are refused once Stop has begun; the one in flight still gets its answer.
  ASSERT_TRUE(WaitFor([&] { return !RawSocket(server->port()).connected(); }));
  respond(Response::Text(200, "text/plain", "finished"));
  auto r = done.get_future().get();
  stopper.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body_view(), "finished");
  // Connection: close is sent when Stop reached the session before the answer, which is a race.
  auto after = client.Fetch("GET", url, {}, {}, seconds(5));
  EXPECT_EQ(after.status().code(), Code::kUnavailable) << after.status().ToString();
}

// With a request budget, a body that does not fit waits unread until an earlier request is
// answered, then goes through; the held bytes follow.
TEST(HttpServerTest, RequestBudgetHoldsBackABodyUntilAnEarlierRequestIsAnswered) {
  constexpr size_t kBody = 600 << 10;
  HttpServerOptions options;
  options.max_held_request_bytes = 1 << 20;
  HttpServer server(options);
  std::mutex mu;
  std::vector<std::pair<Responder, Bytes>> handled;
  server.Handle("POST", "/hold", [&](Request req, Responder respond) {
    std::lock_guard<std::mutex> lock(mu);
    handled.emplace_back(respond, std::move(req.body));
  });
  ASSERT_TRUE(server.Start().ok());
  auto count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return handled.size();
  };
  auto answer = [&](size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    handled[i].first(Response::Text(200, "text/plain", std::to_string(i)));
  };
  HttpClient client;
  const auto deadline = std::chrono::steady_clock::now() + seconds(20);
  std::promise<Result<Response>> first, second;
  client.Request("POST", Base(server) + "/hold", {}, Bytes(kBody, 1), deadline,
                 [&](Result<Response> r) { first.set_value(std::move(r)); });
  ASSERT_TRUE(WaitFor([&] { return count() == 1; }));
  EXPECT_EQ(server.held_request_bytes(), kBody);
  client.Request("POST", Base(server) + "/hold", {}, Bytes(kBody, 2), deadline,
                 [&](Result<Response> r) { second.set_value(std::move(r)); });
  // The second header is in; its body is read as far as the budget allows, and the rest stays
  // unread.
  ASSERT_TRUE(WaitFor([&] { return server.requests_waiting() == 1; }));
  EXPECT_EQ(count(), 1u);
  EXPECT_GT(server.held_request_bytes(), kBody);
  EXPECT_LE(server.held_request_bytes(), 1u << 20);
  answer(0);
  ASSERT_TRUE(WaitFor([&] { return count() == 2; }));
  EXPECT_EQ(server.requests_waiting(), 0u);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(handled[1].second, Bytes(kBody, 2));
  }
  answer(1);
  auto r0 = first.get_future().get();
  auto r1 = second.get_future().get();
  ASSERT_TRUE(r0.ok()) << r0.status().ToString();
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_EQ(r0->body_view(), "0");
  EXPECT_EQ(r1->body_view(), "1");
  EXPECT_TRUE(WaitFor([&] { return server.held_request_bytes() == 0; }));
}

// A body larger than the whole budget still gets in when nothing else is held.
TEST(HttpServerTest, RequestBudgetLetsOneOversizedBodyInAlone) {
  HttpServerOptions options;
  options.max_held_request_bytes = 64 << 10;
  auto server = EchoServer(options);
  auto r = Fetch("POST", Base(*server) + "/echo", {}, Bytes(1 << 20, 7), seconds(10));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, Bytes(1 << 20, 7));
  EXPECT_TRUE(WaitFor([&] { return server->held_request_bytes() == 0; }));
}

}  // namespace
}  // namespace dmoe::net
