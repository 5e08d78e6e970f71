// Streamed answers (Responder::Stream) end to end on loopback: the server's chunked writes, the
// client's FetchStream, Server-Sent Events on top, and the clients that misbehave.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "net/http_client.h"
#include "net/http_server.h"
#include "net/sse.h"
#include "tests/net/test_util.h"

namespace dmoe::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::Base;
using testing::RawSocket;
using testing::ToBytes;
using testing::WaitFor;

// A count that one thread raises and another waits on, with a deadline instead of a sleep.
class Counter {
 public:
  void Add() {
    std::lock_guard<std::mutex> lock(mu_);
    ++n_;
    cv_.notify_all();
  }
  // True when the count reached `n` within `timeout`.
  bool WaitFor(int n, milliseconds timeout = milliseconds(10'000)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return n_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

// A server whose GET /stream hands its stream (status 200, `type`) to the test through `streams`,
// so the test writes it from a thread of its own, as a producer would.
struct StreamServer {
  explicit StreamServer(HttpServerOptions options = {}, std::string type = kSseType)
      : server(std::make_unique<HttpServer>(options)) {
    server->Handle("GET", "/stream", [this, type](Request, Responder respond) {
      auto stream = respond.Stream(200, type, {{"Cache-Control", "no-cache"}});
      std::lock_guard<std::mutex> lock(mu);
      streams.push_back(stream);
      ready.Add();
    });
    server->Handle("GET", "/v1/health", [](Request, Responder respond) {
      respond(Response::Json(200, R"({"status":"ok"})"));
    });
    EXPECT_TRUE(server->Start().ok());
  }
  // The i-th stream begun, once its handler ran.
  std::shared_ptr<ResponseStream> Stream(int i = 0) {
    if (!ready.WaitFor(i + 1)) return nullptr;
    std::lock_guard<std::mutex> lock(mu);
    return streams[i];
  }
  std::string Url() const { return Base(*server) + "/stream"; }

  std::unique_ptr<HttpServer> server;
  std::mutex mu;
  std::vector<std::shared_ptr<ResponseStream>> streams;
  Counter ready;
};

// The producer writes event i only after the client acknowledged event i - 1, so the client must
// see each one before the next exists: nothing is held back in a buffer on the way.
TEST(StreamTest, FetchStreamSeesEachEventBeforeTheNextIsWritten) {
  StreamServer s;
  constexpr int kEvents = 5;
  Counter acked;
  std::atomic<int> written{0};
  std::thread producer([&] {
    auto stream = s.Stream();
    ASSERT_NE(stream, nullptr);
    for (int i = 0; i < kEvents; ++i) {
      written.store(i + 1);
      ASSERT_TRUE(stream->Write(SseEvent("token " + std::to_string(i), "token")));
      ASSERT_TRUE(acked.WaitFor(i + 1));
    }
    stream->End();
    EXPECT_TRUE(stream->closed());
    EXPECT_FALSE(stream->Write("late"));
  });
  SseParser parser;
  std::vector<std::string> got;
  auto r = FetchStream("GET", s.Url(), {}, {}, seconds(10), [&](std::string_view piece) {
    Status parsed = parser.Feed(piece, [&](SseMessage m) {
      EXPECT_EQ(m.event, "token");
      EXPECT_EQ(written.load(), static_cast<int>(got.size()) + 1) << "seen before it was written";
      got.push_back(m.data);
      acked.Add();
    });
    EXPECT_TRUE(parsed.ok()) << parsed.ToString();
    return true;
  });
  producer.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->content_type, "text/event-stream");
  EXPECT_EQ(r->headers.Get("Transfer-Encoding").value_or(""), "chunked");
  EXPECT_EQ(r->headers.Get("Cache-Control").value_or(""), "no-cache");
  EXPECT_TRUE(r->body.empty());
  EXPECT_EQ(got, (std::vector<std::string>{"token 0", "token 1", "token 2", "token 3", "token 4"}));
}

TEST(StreamTest, WireFormatIsChunkedAndClosesTheConnection) {
  StreamServer s({}, "text/plain");
  RawSocket sock(s.server->port());
  ASSERT_TRUE(sock.Send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string head = sock.ReadHead(seconds(5));
  EXPECT_TRUE(head.starts_with("HTTP/1.1 200 OK\r\n")) << head;
  EXPECT_NE(head.find("Transfer-Encoding: chunked\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("Connection: close\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("Content-Type: text/plain\r\n"), std::string::npos) << head;
  EXPECT_EQ(head.find("Content-Length"), std::string::npos) << head;
  auto stream = s.Stream();
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(stream->Write("hello"));
  EXPECT_TRUE(stream->Write(""));
  stream->End();
  bool closed = false;
  std::string body = sock.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(closed);
  // "hello" alone, or with the last chunk in the same write.
  EXPECT_EQ(body, "5\r\nhello\r\n0\r\n\r\n");
}

TEST(StreamTest, Http10ClientGetsTheBodyEndedByTheClose) {
  StreamServer s({}, "text/plain");
  RawSocket sock(s.server->port());
  ASSERT_TRUE(sock.Send("GET /stream HTTP/1.0\r\n\r\n"));
  auto stream = s.Stream();
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(stream->Write("hello "));
  EXPECT_TRUE(stream->Write("world"));
  stream->End();
  bool closed = false;
  std::string all = sock.ReadUntilClose(seconds(5), &closed);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(all.starts_with("HTTP/1.0 200 OK\r\n")) << all;
  EXPECT_EQ(all.find("Transfer-Encoding"), std::string::npos) << all;
  EXPECT_TRUE(all.ends_with("\r\n\r\nhello world")) << all;
}

// A test sink that implements only Deliver: the default BeginStream collects the pieces.
class CollectingSink final : public Responder::Sink {
 public:
  void Deliver(Response response) override { delivered.push_back(std::move(response)); }
  std::vector<Response> delivered;
};

TEST(StreamTest, DefaultSinkCollectsTheStreamIntoOneResponse) {
  auto sink = std::make_shared<CollectingSink>();
  {
    Responder respond(sink);
    auto stream = respond.Stream(201, "text/plain", {{"X-Kind", "collected"}});
    EXPECT_TRUE(stream->Write("ab"));
    EXPECT_TRUE(stream->Write("cd"));
    EXPECT_TRUE(sink->delivered.empty());
    stream->End();
    EXPECT_TRUE(stream->closed());
    EXPECT_FALSE(stream->Write("ef"));
    respond(Response::Json(500, "{}"));  // The Responder's one call was the stream.
    EXPECT_TRUE(respond.Stream(202, "text/plain")->closed());
  }
  ASSERT_EQ(sink->delivered.size(), 1u);
  const Response& r = sink->delivered[0];
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.content_type, "text/plain");
  EXPECT_EQ(r.headers.Get("X-Kind").value_or(""), "collected");
  EXPECT_EQ(r.body_view(), "abcd");

  // Dropped without End: delivered as it is.
  auto dropped = std::make_shared<CollectingSink>();
  Responder(dropped).Stream(200, "text/plain")->Write("partial");
  ASSERT_EQ(dropped->delivered.size(), 1u);
  EXPECT_EQ(dropped->delivered[0].body_view(), "partial");
}

TEST(StreamTest, DroppedHandleEndsTheBodyOnTheWire) {
  HttpServer server({});
  server.Handle("GET", "/drop", [](Request, Responder respond) {
    auto stream = respond.Stream(200, "text/plain");
    stream->Write("partial ");
    stream->Write("answer");
  });
  ASSERT_TRUE(server.Start().ok());
  auto r = Fetch("GET", Base(server) + "/drop", {}, {}, seconds(5));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body_view(), "partial answer");
}

TEST(StreamTest, FetchStreamTakesWholeBodiesAndErrorsToo) {
  HttpServer server({});
  server.Handle("GET", "/whole", [](Request, Responder respond) {
    respond(Response::Text(200, "text/plain", "not streamed"));
  });
  server.Handle("GET", "/bad", [](Request, Responder respond) {
    respond(Response::Error(InvalidArgumentError("prompt is empty")));
  });
  ASSERT_TRUE(server.Start().ok());
  std::string got;
  auto collect = [&](std::string_view piece) {
    got += piece;
    return true;
  };
  auto whole = FetchStream("GET", Base(server) + "/whole", {}, {}, seconds(5), collect);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  EXPECT_EQ(got, "not streamed");
  got.clear();
  auto bad = FetchStream("GET", Base(server) + "/bad", {}, {}, seconds(5), collect);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "prompt is empty");
  EXPECT_EQ(got, "");
}

// on_body returning false closes the connection, which the server sees as the client gone.
TEST(StreamTest, ClientThatStopsReadingClosesTheStream) {
  StreamServer s;
  std::shared_ptr<ResponseStream> stream;
  std::thread producer([&] {
    stream = s.Stream();
    ASSERT_NE(stream, nullptr);
    stream->Write(SseEvent("first"));
  });
  int pieces = 0;
  auto r = FetchStream("GET", s.Url(), {}, {}, seconds(10), [&](std::string_view piece) {
    EXPECT_EQ(piece, SseEvent("first"));
    ++pieces;
    return false;
  });
  producer.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(pieces, 1);
  EXPECT_TRUE(WaitFor([&] { return stream->closed(); }));
  EXPECT_FALSE(stream->Write(SseEvent("second")));
}

TEST(StreamTest, FetchStreamBoundsTheSumOfPieces) {
  StreamServer s;
  std::thread producer([&] {
    auto stream = s.Stream();
    ASSERT_NE(stream, nullptr);
    for (int i = 0; i < 4; ++i) stream->Write(std::string(100, 'x'));
    stream->End();
  });
  HttpClientOptions options;
  options.max_response_body_bytes = 250;
  HttpClient client(options);
  size_t bytes = 0;
  auto r = client.FetchStream("GET", s.Url(), {}, {}, seconds(10), [&](std::string_view piece) {
    bytes += piece.size();
    return true;
  });
  producer.join();
  EXPECT_EQ(r.status().code(), Code::kPayloadTooLarge) << r.status().ToString();
  EXPECT_LE(bytes, 250u);
}

// A client that never reads: the stream's unwritten bytes stay within the limit, the Write that
// would pass it is refused, the connection is closed, and other clients are served meanwhile.
TEST(StreamTest, ClientThatNeverReadsIsCutAtTheQueueLimit) {
  HttpServerOptions options;
  options.max_stream_queued_bytes = 256 << 10;
  StreamServer s(options);
  RawSocket rogue(s.server->port());
  ASSERT_TRUE(rogue.Send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto stream = s.Stream();
  ASSERT_NE(stream, nullptr);
  const std::string piece(16 << 10, 'p');
  uint64_t peak = 0;
  uint64_t accepted = 0;
  // The socket buffers on both ends take some megabytes before the queue grows.
  while (accepted < (512ull << 20) && stream->Write(piece)) {
    accepted += piece.size();
    peak = std::max(peak, s.server->stream_queued_bytes());
  }
  EXPECT_LT(accepted, 512ull << 20) << "never cut";
  EXPECT_GE(peak, options.max_stream_queued_bytes - piece.size());
  EXPECT_LE(peak, options.max_stream_queued_bytes);
  EXPECT_TRUE(stream->closed());
  EXPECT_FALSE(stream->Write(piece));
  ASSERT_TRUE(WaitFor([&] { return s.server->open_connections() == 0; }));
  EXPECT_EQ(s.server->slow_clients_cut(), 1u);
  EXPECT_EQ(s.server->stream_queued_bytes(), 0u);
  auto health = Fetch("GET", Base(*s.server) + "/v1/health", {}, {}, seconds(5));
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ(health->body_view(), R"({"status":"ok"})");
}

TEST(StreamTest, ClientThatDisconnectsClosesTheStream) {
  StreamServer s;
  auto rogue = std::make_unique<RawSocket>(s.server->port());
  ASSERT_TRUE(rogue->Send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_NE(rogue->ReadHead(seconds(5)).find("200 OK"), std::string::npos);
  auto stream = s.Stream();
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(stream->Write(SseEvent("one")));
  EXPECT_FALSE(stream->closed());
  rogue.reset();
  ASSERT_TRUE(WaitFor([&] { return stream->closed(); }));
  EXPECT_FALSE(stream->Write(SseEvent("two")));
  EXPECT_TRUE(WaitFor([&] { return s.server->open_connections() == 0; }));
}

TEST(StreamTest, StopEndsLiveStreamsWithinItsDeadline) {
  StreamServer s;
  RawSocket sock(s.server->port());
  ASSERT_TRUE(sock.Send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_NE(sock.ReadHead(seconds(5)).find("200 OK"), std::string::npos);
  auto stream = s.Stream();
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(stream->Write("hello"));
  const auto start = std::chrono::steady_clock::now();
  s.server->Stop(seconds(2));
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(2));
  EXPECT_TRUE(stream->closed());
  EXPECT_FALSE(stream->Write("after stop"));
  bool closed = false;
  // What was queued, then the last chunk: the client sees a well-formed end.
  EXPECT_EQ(sock.ReadUntilClose(seconds(5), &closed), "5\r\nhello\r\n0\r\n\r\n");
  EXPECT_TRUE(closed);
}

}  // namespace
}  // namespace dmoe::net
