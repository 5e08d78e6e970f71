// Generation over the router's WebSocket: the messages (router/ws_generation.h), then GET /v1/ws of
// an in-process router serving the shift model (tests/openai/shift_model.h): interleaved requests,
// refusals, a client that floods past the in-flight limit and one that never reads.
#include "router/ws_generation.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/clock.h"
#include "net/http_client.h"
#include "tests/openai/shift_model.h"
#include "tests/router/router_fixture.h"

namespace dmoe::router {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

TEST(WsGenerationMessagesTest, ParseTakesIdModelAndTheGenerateFields) {
  std::string id;
  Result<WsGenerateRequest> r = ParseWsGenerateRequest(
      R"({"id": "q1", "model": "shift", "prompt": "ab", "max_tokens": 3, "seed": 4})",
      GenerateLimits{}, &id);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->id, "q1");
  EXPECT_EQ(id, "q1");
  EXPECT_EQ(r->model, "shift");
  EXPECT_EQ(r->params.prompt, "ab");
  EXPECT_EQ(r->params.max_tokens, 3);
  EXPECT_EQ(r->params.seed, 4u);
}

TEST(WsGenerationMessagesTest, RefusalsKeepTheIdWhenThereIsOne) {
  std::string id = "stale";
  Result<WsGenerateRequest> r =
      ParseWsGenerateRequest(R"({"id": "q2", "prompt": "a"})", GenerateLimits{}, &id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(id, "q2");
  r = ParseWsGenerateRequest(R"({"id": "q3", "model": "shift", "prompt": ""})", GenerateLimits{},
                             &id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(id, "q3");
  r = ParseWsGenerateRequest(
      json({{"id", std::string(65, 'i')}, {"model", "m"}, {"prompt", "a"}}).dump(),
      GenerateLimits{}, &id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(id, "");
  r = ParseWsGenerateRequest("[1, 2]", GenerateLimits{}, &id);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  r = ParseWsGenerateRequest(std::string(kMaxGenerateRequestBytes + 1, ' '), GenerateLimits{}, &id);
  EXPECT_EQ(r.status().code(), Code::kPayloadTooLarge);
}

TEST(WsGenerationMessagesTest, EventsAndRefusalsHaveTheirShapes) {
  GenerationEvent piece;
  piece.text = "bc";
  std::vector<std::string> m = WsEventMessages("q", piece);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(json::parse(m[0]), json({{"id", "q"}, {"text", "bc"}}));
  m = WsEventMessages("q", {.text = "d",
                            .done = true,
                            .finish_reason = FinishReason::kError,
                            .error = UnavailableError("no experts"),
                            .prompt_tokens = 1,
                            .completion_tokens = 3,
                            .model_version = 42});
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(json::parse(m[0]), json({{"id", "q"}, {"text", "d"}}));
  EXPECT_EQ(json::parse(m[1]),
            json({{"id", "q"},
                  {"text", ""},
                  {"finish_reason", "error"},
                  {"usage", {{"prompt_tokens", 1}, {"completion_tokens", 3}}},
                  {"model_version", 42},
                  {"error", {{"code", "unavailable"}, {"message", "no experts"}}}}));
  EXPECT_EQ(
      json::parse(WsErrorMessage("q", ResourceExhaustedError("8 in flight"))),
      json({{"id", "q"}, {"error", {{"code", "resource_exhausted"}, {"message", "8 in flight"}}}}));
}

// What one connection received, by request id, in order.
class Received {
 public:
  void Add(const net::Bytes& message) {
    json j = json::parse(std::string(message.begin(), message.end()), nullptr, false);
    std::lock_guard<std::mutex> lock(mu_);
    ASSERT_TRUE(j.is_object() && j.contains("id")) << std::string(message.begin(), message.end());
    by_id_[j["id"].get<std::string>()].push_back(j);
    cv_.notify_all();
  }
  // Waits until `ids` each got their last message (one with finish_reason or error).
  bool WaitDone(const std::vector<std::string>& ids, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const std::string& id : ids) {
        auto it = by_id_.find(id);
        if (it == by_id_.end() || !IsLast(it->second.back())) return false;
      }
      return true;
    });
  }
  std::vector<json> Of(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return by_id_[id];
  }
  static bool IsLast(const json& m) { return m.contains("finish_reason") || m.contains("error"); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<json>> by_id_;
};

std::string TextOf(const std::vector<json>& messages) {
  std::string text;
  for (const json& m : messages) text += m.value("text", "");
  return text;
}

// One client connection and what it received. Members go in reverse order: the connection, then
// the client (which joins its thread), then what that thread wrote to.
struct Session {
  Received received;
  net::WsClient client;
  std::shared_ptr<net::WsConnection> conn;
};

class WsGenerationRouteTest : public RouterTest {
 protected:
  void SetUp() override {
    StartRouter();
    version_ = NowMs();
    ASSERT_EQ(Publish("shift", testing::ShiftModel("shift", false, version_)).status, 200);
  }

  // Connects `s`; its messages go to s.received, after `on_message` ran.
  void Open(Session& s, std::function<void()> on_message = {}) {
    std::promise<Result<std::shared_ptr<net::WsConnection>>> p;
    Received& received = s.received;
    net::WsHandlers handlers;
    handlers.on_message = [&received, on_message](const std::shared_ptr<net::WsConnection>&,
                                                  net::Bytes m) {
      if (on_message) on_message();
      received.Add(m);
    };
    s.client.Connect(
        "ws://127.0.0.1:" + std::to_string(router_->port()) + "/v1/ws", {}, std::move(handlers),
        std::chrono::steady_clock::now() + 10s,
        [&](Result<std::shared_ptr<net::WsConnection>> r) { p.set_value(std::move(r)); });
    Result<std::shared_ptr<net::WsConnection>> r = p.get_future().get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    s.conn = *r;
  }

  static void Send(net::WsConnection& conn, const json& request) {
    const std::string text = request.dump();
    ASSERT_TRUE(conn.Send(net::Bytes(text.begin(), text.end())).ok());
  }

  int64_t version_ = 0;
};

TEST_F(WsGenerationRouteTest, InterleavedGenerationsAnswerEachId) {
  Session s;
  ASSERT_NO_FATAL_FAILURE(Open(s));
  Send(*s.conn, {{"id", "one"}, {"model", "shift"}, {"prompt", "a"}, {"max_tokens", 3}});
  Send(*s.conn,
       {{"id", "two"}, {"model", "shift"}, {"prompt", "k"}, {"max_tokens", 5}, {"temperature", 0}});
  ASSERT_TRUE(s.received.WaitDone({"one", "two"}, 30s));
  std::vector<json> one = s.received.Of("one");
  EXPECT_EQ(TextOf(one), "bcd");
  EXPECT_EQ(one.back(), json({{"id", "one"},
                              {"text", ""},
                              {"finish_reason", "length"},
                              {"usage", {{"prompt_tokens", 1}, {"completion_tokens", 3}}},
                              {"model_version", version_}}));
  EXPECT_EQ(TextOf(s.received.Of("two")), "lmnop");
}

TEST_F(WsGenerationRouteTest, RefusedRequestsAnswerAnErrorAndTheConnectionGoesOn) {
  Session s;
  ASSERT_NO_FATAL_FAILURE(Open(s));
  Send(*s.conn, {{"id", "bad"}, {"model", "shift"}, {"prompt", "a"}, {"temperature", 9}});
  Send(*s.conn, {{"id", "unknown"}, {"model", "nope"}, {"prompt", "a"}});
  const std::string garbage = "not json";
  ASSERT_TRUE(s.conn->Send(net::Bytes(garbage.begin(), garbage.end())).ok());
  Send(*s.conn, {{"id", "good"}, {"model", "shift"}, {"prompt", "x"}, {"max_tokens", 2}});
  ASSERT_TRUE(s.received.WaitDone({"bad", "unknown", "", "good"}, 30s));
  EXPECT_EQ(s.received.Of("bad").back()["error"]["code"], "invalid_argument");
  EXPECT_EQ(s.received.Of("unknown").back()["error"]["code"], "not_found");
  EXPECT_EQ(s.received.Of("").back()["error"]["code"], "invalid_argument");
  EXPECT_EQ(TextOf(s.received.Of("good")), "yz");
}

// Nine long generations sent at once: eight are taken, the ninth is refused resource_exhausted
// (generating 200 tokens takes far longer than reading nine messages), and the eight all finish.
TEST_F(WsGenerationRouteTest, AFloodPastEightInFlightIsRefused) {
  Session s;
  ASSERT_NO_FATAL_FAILURE(Open(s));
  std::vector<std::string> ids;
  for (int i = 0; i < kMaxWsGenerationsInFlight + 1; ++i) {
    ids.push_back("r" + std::to_string(i));
    Send(*s.conn, {{"id", ids.back()}, {"model", "shift"}, {"prompt", "a"}, {"max_tokens", 200}});
  }
  ASSERT_TRUE(s.received.WaitDone(ids, 60s));
  for (int i = 0; i < kMaxWsGenerationsInFlight; ++i) {
    EXPECT_EQ(s.received.Of(ids[i]).back()["finish_reason"], "length") << ids[i];
    EXPECT_EQ(s.received.Of(ids[i]).back()["usage"]["completion_tokens"], 200) << ids[i];
  }
  EXPECT_EQ(
      s.received.Of(ids.back()),
      std::vector<json>{json({{"id", ids.back()},
                              {"error",
                               {{"code", "resource_exhausted"},
                                {"message", s.received.Of(ids.back())[0]["error"]["message"]}}}})});
  // Once they are done, the connection takes new generations again.
  Send(*s.conn, {{"id", "after"}, {"model", "shift"}, {"prompt", "a"}, {"max_tokens", 1}});
  ASSERT_TRUE(s.received.WaitDone({"after"}, 30s));
  EXPECT_EQ(TextOf(s.received.Of("after")), "b");
}

// A client that stops reading (its only network thread blocks in its first message handler) while
// eight long generations stream to it: the decode thread never waits for it, so another client is
// served at once.
TEST_F(WsGenerationRouteTest, AClientThatNeverReadsDoesNotHoldOthersUp) {
  Session rogue;
  // Unblocks the rogue's thread before its client is destroyed (which joins it), however the test
  // ends.
  struct Release {
    std::promise<void> promise;
    ~Release() { promise.set_value(); }
  } release;
  std::shared_future<void> released = release.promise.get_future().share();
  ASSERT_NO_FATAL_FAILURE(Open(rogue, [released] { released.wait(); }));
  for (int i = 0; i < kMaxWsGenerationsInFlight; ++i) {
    Send(*rogue.conn, {{"id", "rogue" + std::to_string(i)},
                       {"model", "shift"},
                       {"prompt", "a"},
                       {"max_tokens", 1000}});
  }
  Session s;
  ASSERT_NO_FATAL_FAILURE(Open(s));
  Send(*s.conn, {{"id", "polite"}, {"model", "shift"}, {"prompt", "a"}, {"max_tokens", 5}});
  EXPECT_TRUE(s.received.WaitDone({"polite"}, 30s));
  EXPECT_EQ(TextOf(s.received.Of("polite")), "bcdef");
}

}  // namespace
}  // namespace dmoe::router
