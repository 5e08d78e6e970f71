#include "net/http_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "net/http_server.h"
#include "net/url.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Base;
using testing::WaitFor;

TEST(UrlTest, ParsesHostPortAndTarget) {
  auto u = ParseUrl("http://10.0.0.5:8000/v1/experts?x=1");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "10.0.0.5");
  EXPECT_EQ(u->port, 8000);
  EXPECT_EQ(u->target, "/v1/experts?x=1");
  auto v6 = ParseUrl("ws://[::1]:9/v1/ws");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->HostPort(), "[::1]:9");
  auto bare = ParseUrl("http://example.org");
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->port, 80);
  EXPECT_EQ(bare->target, "/");
  EXPECT_EQ(ParseUrl("https://x/").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseUrl("http://x:99999/").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseUrl("x:1/").status().code(), Code::kInvalidArgument);
}

// The authority is an address as core/host_port.h parses them, with port 80 when none is given.
TEST(UrlTest, AuthorityIsParsedAsEveryAddressIs) {
  auto v6 = ParseUrl("http://[::1]/x");
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 80);
  for (const char* url : {"http://::1:80/", "http://[::1/", "http://h:0/", "http://h:/",
                          "http://ho st:80/", "http://:80/"}) {
    SCOPED_TRACE(url);
    auto r = ParseUrl(url);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(url), std::string::npos) << r.status().message();
  }
}

TEST(MediaTypeTest, ParametersSpacesAndCaseDoNotMatter) {
  EXPECT_EQ(MediaTypeOf({{"content-type", " application/json ; charset=utf-8"}}),
            "application/json");
  EXPECT_EQ(MediaTypeOf({}), "");
  EXPECT_TRUE(HasMediaType({{"Content-Type", "Application/JSON"}}, "application/json"));
  EXPECT_FALSE(HasMediaType({{"Content-Type", "application/jsonx"}}, "application/json"));
  EXPECT_TRUE(IsSafetensorsBody({{"Content-Type", "application/x-safetensors"}}));
  EXPECT_TRUE(IsSafetensorsBody({{"Content-Type", "application/octet-stream; x=1"}}));
  EXPECT_FALSE(IsSafetensorsBody({{"Content-Type", "application/json"}}));
  EXPECT_FALSE(IsSafetensorsBody({}));
}

// A call to a server that never answers ends with deadline_exceeded once its deadline has passed,
// and not before: a call with a later deadline to the same server is still waiting then.
TEST(HttpClientTest, DeadlineAgainstSilentServer) {
  testing::SilentListener silent;
  const std::string url = "http://127.0.0.1:" + std::to_string(silent.port()) + "/x";
  std::atomic<bool> later_done{false};
  std::promise<std::chrono::steady_clock::time_point> ended_at;
  std::promise<Result<Response>> done;
  HttpClient client;
  client.Request("GET", url, {}, {}, std::chrono::steady_clock::now() + seconds(60),
                 [&](Result<Response>) { later_done = true; });
  const Deadline deadline = std::chrono::steady_clock::now() + milliseconds(300);
  client.Request("GET", url, {}, {}, deadline, [&](Result<Response> r) {
    ended_at.set_value(std::chrono::steady_clock::now());
    done.set_value(std::move(r));
  });
  Result<Response> r = done.get_future().get();
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(ended_at.get_future().get(), deadline);
  EXPECT_FALSE(later_done.load()) << "the later deadline cannot have passed yet";
}

TEST(HttpClientTest, ConnectionRefusedIsUnavailable) {
  auto r = Fetch("GET", "http://127.0.0.1:" + std::to_string(testing::UnusedPort()) + "/x");
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
}

TEST(HttpClientTest, BadUrlIsInvalidArgument) {
  EXPECT_EQ(Fetch("GET", "nonsense").status().code(), Code::kInvalidArgument);
}

TEST(HttpClientTest, ErrorBodyMapsBackToTheSameStatus) {
  HttpServer server({});
  server.Handle("GET", "/busy", [](Request, Responder respond) {
    respond(Response::Error(ResourceExhaustedError("64 requests in flight")));
  });
  server.Handle("GET", "/plain", [](Request, Responder respond) {
    respond(Response::Text(503, "text/plain", "down"));
  });
  ASSERT_TRUE(server.Start().ok());
  auto r = Fetch("GET", Base(server) + "/busy");
  EXPECT_EQ(r.status(), ResourceExhaustedError("64 requests in flight"));
  auto raw =
      Fetch("GET", Base(server) + "/busy", {}, {}, seconds(5), {.raw_error_responses = true});
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->status, 429);
  EXPECT_EQ(raw->headers.Get("Retry-After").value_or(""), "1");
  EXPECT_EQ(Fetch("GET", Base(server) + "/plain").status().code(), Code::kUnavailable);
}

// A call's own body limit, below the client's: a declared length past it is refused before the body
// is read, and a body within it comes through.
TEST(HttpClientTest, PerRequestBodyLimit) {
  HttpServer server({});
  server.Handle("GET", "/big", [](Request, Responder respond) {
    respond(Response::Binary(200, "application/octet-stream", Bytes(100 << 10, 1)));
  });
  server.Handle("GET", "/small", [](Request, Responder respond) {
    respond(Response::Json(200, R"({"status":"ok"})"));
  });
  ASSERT_TRUE(server.Start().ok());
  RequestOptions limited{.max_response_body_bytes = 64 << 10};
  auto big = Fetch("GET", Base(server) + "/big", {}, {}, seconds(5), limited);
  EXPECT_EQ(big.status().code(), Code::kResourceExhausted) << big.status().ToString();
  EXPECT_NE(big.status().message().find("65536"), std::string::npos) << big.status().ToString();
  auto small = Fetch("GET", Base(server) + "/small", {}, {}, seconds(5), limited);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  EXPECT_EQ(small->body_view(), R"({"status":"ok"})");
  auto unlimited = Fetch("GET", Base(server) + "/big", {}, {}, seconds(5));
  ASSERT_TRUE(unlimited.ok()) << unlimited.status().ToString();
  EXPECT_EQ(unlimited->body.size(), 100u << 10);
}

TEST(HttpClientTest, CancelEndsTheCallPromptly) {
  testing::SilentListener silent;
  HttpClient client;
  std::promise<Result<Response>> done;
  CallHandle handle =
      client.Request("GET", "http://127.0.0.1:" + std::to_string(silent.port()) + "/x", {}, {},
                     std::chrono::steady_clock::now() + seconds(30),
                     [&](Result<Response> r) { done.set_value(std::move(r)); });
  handle.Cancel();
  // Ended by the cancel, long before its deadline (which would be deadline_exceeded).
  Status s = done.get_future().get().status();
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("cancelled"), std::string::npos) << s.ToString();
  handle.Cancel();  // After completion: a no-op.
}

TEST(HttpClientTest, ReconnectsWhenServerClosedAnIdleConnection) {
  HttpServerOptions options;
  options.idle_timeout = milliseconds(100);
  HttpServer server(options);
  server.Handle("GET", "/x",
                [](Request, Responder respond) { respond(Response::Json(200, "{}")); });
  ASSERT_TRUE(server.Start().ok());
  HttpClient client;
  ASSERT_TRUE(client.Fetch("GET", Base(server) + "/x", {}, {}, seconds(5)).ok());
  ASSERT_TRUE(WaitFor([&] { return server.open_connections() == 0; }));
  auto r = client.Fetch("GET", Base(server) + "/x", {}, {}, seconds(5));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(client.connections_opened(), 2u);
}

TEST(HttpClientTest, DestroyingClientCompletesCallsInFlight) {
  testing::SilentListener silent;
  std::promise<Result<Response>> done;
  {
    HttpClient client;
    client.Request("GET", "http://127.0.0.1:" + std::to_string(silent.port()) + "/x", {}, {},
                   std::chrono::steady_clock::now() + seconds(30),
                   [&](Result<Response> r) { done.set_value(std::move(r)); });
  }
  // The destructor returned: the call's callback has run by then.
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(seconds(0)), std::future_status::ready);
  EXPECT_EQ(future.get().status().code(), Code::kUnavailable);
}

}  // namespace
}  // namespace dmoe::net
