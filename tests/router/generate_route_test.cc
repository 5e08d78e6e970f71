// POST /v1/models/{name}/generate on an in-process router whose token models run their moe layers
// on the in-process 4x4 swarm (tests/gating/swarm4x4.h), checked against the same model run here
// on the same experts: greedy text, determinism alone and among concurrent requests, shared decode
// steps, limits and errors, and a swarm that fails mid-generation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "data/byte_tokenizer.h"
#include "net/http_client.h"
#include "net/sse.h"
#include "router/router.h"
#include "tests/gating/swarm4x4.h"
#include "tests/router/token_models.h"
#include "tests/testing/in_process_router.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::router {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class GenerateRouteTest : public gating::Swarm4x4 {
 protected:
  void TearDown() override {
    if (router_) router_->Stop();
  }

  void StartRouter(RouterOptions options = {}) {
    options.listen_host = "127.0.0.1";
    options.listen_port = 0;
    options.db_dir = dir_.Sub("router");
    options.inference_threads = 1;
    // As the swarm's own client: ask every node that stores a grid key, so the router sees every
    // expert this process's model sees.
    dht::DhtOptions dht_options = testing::LoopbackDhtOptions({boot_->local_address()});
    dht_options.node.get_quorum = 5;
    auto r = testing::StartInProcessRouter(std::move(options), std::move(dht_options));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    router_ = std::move(r).value();
  }

  net::Response Call(const std::string& method, const std::string& path, net::Headers headers,
                     std::string_view body) {
    Result<net::Response> r = net::Fetch(method, router_->endpoint() + path, std::move(headers),
                                         net::Bytes(body.begin(), body.end()), 120s,
                                         net::RequestOptions{.raw_error_responses = true});
    EXPECT_TRUE(r.ok()) << method << " " << path << ": " << r.status().ToString();
    return r.ok() ? std::move(r).value() : net::Response{};
  }

  // Publishes `model` as `spec_json` at the router's clock; returns the version.
  int64_t Publish(const gating::DmoeModel& model, const std::string& spec_json) {
    const int64_t version = RealClock::Instance().NowUnixMs();
    const storage::Model stored = Stored(model, spec_json, version);
    std::string body(stored.state.begin(), stored.state.end());
    net::Response r = Call("PUT", "/v1/models/" + stored.info.name,
                           {{"Content-Type", "application/x-safetensors"}}, body);
    EXPECT_EQ(r.status, 200) << r.body_view();
    return version;
  }

  net::Response Generate(const std::string& name, const json& body) {
    return Call("POST", "/v1/models/" + name + "/generate", {{"Content-Type", "application/json"}},
                body.dump());
  }
  static json Body(const net::Response& r) {
    return json::parse(r.body_view(), nullptr, /*allow_exceptions=*/false);
  }

  // The value of an unlabelled series of GET /metrics; -1 when absent.
  double Metric(const std::string& name) {
    net::Response r = Call("GET", "/metrics", {}, "");
    std::istringstream lines{std::string(r.body_view())};
    for (std::string line; std::getline(lines, line);) {
      if (line.starts_with(name + " ")) return std::stod(line.substr(name.size() + 1));
    }
    return -1;
  }
  // Polls GET /metrics (with a deadline) until `name` reaches `value`.
  bool WaitMetricAtLeast(const std::string& name, double value) {
    return testing::PollUntil([&] { return Metric(name) >= value; }, 60s, 2ms);
  }

  testing::TempDir dir_{"dmoe-generate-test"};
  std::unique_ptr<Router> router_;
};

TEST_F(GenerateRouteTest, GreedyTextThroughTheSwarmIsTheArgmaxOfFullForwards) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 64, /*k_min=*/2, /*forward_timeout_ms=*/20000);
  gating::DmoeModel model = BuildLm(spec, 11, gating::ModelContext{MakeSwarm()});
  const int64_t version = Publish(model, spec);

  net::Response r = Generate("lm", {{"prompt", "In the"}, {"max_tokens", 6}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body_view();
  EXPECT_EQ(net::MediaTypeOf(r.headers), "application/json");
  const json body = Body(r);
  EXPECT_EQ(body["text"], data::DecodeUtf8Lossy(GreedyBytes(model, "In the", 6)));
  EXPECT_EQ(body["finish_reason"], "length");
  EXPECT_EQ(body["usage"], json({{"prompt_tokens", 6}, {"completion_tokens", 6}}));
  EXPECT_EQ(body["model_version"], version);
  EXPECT_FALSE(body.contains("error"));

  // A token model takes no features.
  r = Call("POST", "/v1/models/lm/infer", {{"Content-Type", "application/json"}},
           R"({"inputs": [[1, 2]]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body_view().find("use POST /v1/models/lm/generate"), std::string::npos)
      << r.body_view();
}

TEST_F(GenerateRouteTest, ASeedGivesTheSameTextAloneAndAmongEightConcurrentRequests) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 64, /*k_min=*/2, /*forward_timeout_ms=*/20000);
  Publish(BuildLm(spec, 12, gating::ModelContext{MakeSwarm()}), spec);
  static constexpr int kTokens = 16;
  auto request = [](const std::string& prompt, uint64_t seed) {
    return json{{"prompt", prompt}, {"max_tokens", kTokens}, {"temperature", 0.9}, {"seed", seed}};
  };
  net::Response alone = Generate("lm", request("And God said", 1234));
  ASSERT_EQ(alone.status, 200) << alone.body_view();
  const double steps_alone = Metric("dmoe_router_generate_steps_total");
  EXPECT_EQ(steps_alone, kTokens);

  std::vector<std::future<net::Response>> answers;
  for (int i = 0; i < 8; ++i) {
    answers.push_back(std::async(std::launch::async, [&, i] {
      return Generate("lm", i == 0 ? request("And God said", 1234)
                                   : request("prompt " + std::to_string(i), 77 + i));
    }));
  }
  std::vector<json> bodies;
  for (auto& a : answers) {
    net::Response r = a.get();
    ASSERT_EQ(r.status, 200) << r.body_view();
    bodies.push_back(Body(r));
    EXPECT_EQ(bodies.back()["usage"]["completion_tokens"], kTokens);
  }
  EXPECT_EQ(bodies[0]["text"], Body(alone)["text"]);
  EXPECT_EQ(Metric("dmoe_router_generated_tokens_total"), 9 * kTokens);
  // Continuous batching: the 8 requests share steps. One alone takes kTokens steps; 8 one after
  // the other would take 8 x kTokens.
  const double steps = Metric("dmoe_router_generate_steps_total") - steps_alone;
  EXPECT_LE(steps, 3 * kTokens) << "8 requests took " << steps << " steps";
}

// What a generate stream carried, read with the client a program would use.
struct Streamed {
  int status = 0;
  std::string content_type;
  std::string text;  // the text of every event, joined
  int events = 0;
  json last;  // the event with finish_reason
};

// `go_on` sees what arrived after each piece of the body and returns false to hang up.
Streamed ReadStream(const std::string& url, const json& body,
                    const std::function<bool(const Streamed&)>& go_on = {}) {
  Streamed s;
  net::SseParser parser;
  const std::string payload = body.dump();
  Result<net::Response> head = net::FetchStream(
      "POST", url, {{"Content-Type", "application/json"}},
      net::Bytes(payload.begin(), payload.end()), 120s, [&](std::string_view piece) {
        Status fed = parser.Feed(piece, [&](net::SseMessage m) {
          json e = json::parse(m.data);
          s.text += e.value("text", "");
          ++s.events;
          if (e.contains("finish_reason")) s.last = e;
        });
        EXPECT_TRUE(fed.ok()) << fed.ToString();
        return fed.ok() && (!go_on || go_on(s));
      });
  EXPECT_TRUE(head.ok()) << head.status().ToString();
  if (!head.ok()) return s;
  s.status = head->status;
  s.content_type = std::string(net::MediaTypeOf(head->headers));
  return s;
}

TEST_F(GenerateRouteTest, AStreamCarriesTheTextOfTheWholeAnswerEventByEvent) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 64, /*k_min=*/1, /*forward_timeout_ms=*/20000);
  const int64_t version = Publish(BuildLm(spec, 13, gating::ModelContext{MakeSwarm()}), spec);
  json request = {{"prompt", "In the"}, {"max_tokens", 12}, {"temperature", 1.0}, {"seed", 5}};
  net::Response whole = Generate("lm", request);
  ASSERT_EQ(whole.status, 200) << whole.body_view();

  request["stream"] = true;
  Streamed s = ReadStream(router_->endpoint() + "/v1/models/lm/generate", request);
  EXPECT_EQ(s.status, 200);
  EXPECT_EQ(s.content_type, "text/event-stream");
  EXPECT_EQ(s.text, Body(whole)["text"]);
  // One event per piece of text (a token, or the bytes of one character), then the last one.
  EXPECT_GE(s.events, 2);
  EXPECT_LE(s.events, 13);
  EXPECT_EQ(s.last["text"], "");
  EXPECT_EQ(s.last["finish_reason"], "length");
  EXPECT_EQ(s.last["usage"], json({{"prompt_tokens", 6}, {"completion_tokens", 12}}));
  EXPECT_EQ(s.last["model_version"], version);
}

// A client that hangs up mid-stream ends its generation at once, not after max_tokens: its slot
// among --max-generations is free again and the decode thread stops spending steps on it.
TEST_F(GenerateRouteTest, AClientThatLeavesAStreamEndsItsGeneration) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 1024, /*k_min=*/1, /*forward_timeout_ms=*/20000);
  Publish(BuildLm(spec, 14, gating::ModelContext{MakeSwarm()}), spec);
  const double before = std::max(0.0, Metric("dmoe_router_generated_tokens_total"));
  Streamed s = ReadStream(router_->endpoint() + "/v1/models/lm/generate",
                          {{"prompt", "a"}, {"max_tokens", 1000}, {"stream", true}},
                          [](const Streamed& so_far) { return so_far.events < 3; });
  EXPECT_EQ(s.status, 200);
  EXPECT_TRUE(s.last.is_null());
  // Poll (with a deadline) until the generator has let go of it.
  EXPECT_TRUE(
      testing::PollUntil([&] { return Metric("dmoe_router_generations_pending") == 0; }, 60s, 2ms));
  const double generated = Metric("dmoe_router_generated_tokens_total") - before;
  EXPECT_LT(generated, 500) << "a generation nobody reads ran on";
}

TEST_F(GenerateRouteTest, BadRequestsAreRefusedNamingWhatIsWrong) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 64, /*k_min=*/2, /*forward_timeout_ms=*/20000);
  Publish(BuildLm(spec, 13, gating::ModelContext{MakeSwarm()}), spec);
  const std::string feature_spec =
      R"({"name": "features", "input_dim": 4, "layers": [{"type": "linear", "out": 2}]})";
  Publish(BuildLm(feature_spec, 1), feature_spec);

  struct Case {
    std::string what;
    net::Response response;
    int status;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"max_tokens", Generate("lm", {{"prompt", "a"}, {"max_tokens", 0}}), 400,
       "max_tokens must be in 1..1024, not 0"},
      {"temperature", Generate("lm", {{"prompt", "a"}, {"temperature", 3}}), 400,
       "temperature must be in 0..2"},
      {"top_p", Generate("lm", {{"prompt", "a"}, {"top_p", 0}}), 400, "top_p must be in (0, 1]"},
      {"top_k", Generate("lm", {{"prompt", "a"}, {"top_k", 300}}), 400, "top_k must be in 0..256"},
      {"stop", Generate("lm", {{"prompt", "a"}, {"stop", {""}}}), 400, "stop[0] must hold 1..64"},
      {"seed", Generate("lm", {{"prompt", "a"}, {"seed", -3}}), 400, "seed must be an integer"},
      {"prompt", Generate("lm", {{"max_tokens", 3}}), 400, "prompt is missing"},
      {"stream", Generate("lm", {{"prompt", "a"}, {"stream", 1}}), 400, "stream must be"},
      {"prompt past the context", Generate("lm", {{"prompt", std::string(64, 'a')}}), 400,
       "so a prompt may hold at most 63"},
      {"not JSON",
       Call("POST", "/v1/models/lm/generate", {{"Content-Type", "application/json"}}, "{"), 400,
       "the body is not valid JSON"},
      {"unknown model", Generate("nobody", {{"prompt", "a"}}), 404, "nobody"},
      {"feature model", Generate("features", {{"prompt", "a"}}), 400,
       "model 'features' is not a token model"},
      {"text/plain",
       Call("POST", "/v1/models/lm/generate", {{"Content-Type", "text/plain"}},
            R"({"prompt": "a"})"),
       415, "application/json"},
      {"65 KiB",
       Call("POST", "/v1/models/lm/generate", {{"Content-Type", "application/json"}},
            R"({"prompt": "a", "pad": ")" + std::string(65 << 10, ' ') + "\"}"),
       413, "a generate request has at most 65536 bytes"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.response.status, c.status) << c.what << ": " << c.response.body_view();
    const json body = Body(c.response);
    ASSERT_TRUE(body.contains("error")) << c.what << ": " << c.response.body_view();
    EXPECT_NE(body["error"]["message"].get<std::string>().find(c.says), std::string::npos)
        << c.what << ": " << c.response.body_view();
  }
}

TEST_F(GenerateRouteTest, PastMaxGenerationsRequestsAre503WithRetryAfter) {
  RouterOptions options;
  options.max_generations = 1;
  StartRouter(options);
  const std::string spec = SwarmLmSpec("long", 1024, /*k_min=*/2, /*forward_timeout_ms=*/20000);
  Publish(BuildLm(spec, 14, gating::ModelContext{MakeSwarm()}), spec);
  // One generation of a thousand steps through the swarm holds the only place.
  auto running = std::async(std::launch::async, [&] {
    return Generate("long", {{"prompt", "In"}, {"max_tokens", 1000}, {"temperature", 0}});
  });
  ASSERT_TRUE(WaitMetricAtLeast("dmoe_router_generated_tokens_total", 1));
  // A rogue floods the router meanwhile: each request is refused at once.
  for (int i = 0; i < 10; ++i) {
    net::Response r = Generate("long", {{"prompt", "flood"}, {"max_tokens", 1000}});
    EXPECT_EQ(r.status, 503) << r.body_view();
    EXPECT_EQ(Body(r)["error"]["code"], "unavailable");
    EXPECT_EQ(r.headers.Get("Retry-After").value_or(""), "1");
  }
  EXPECT_EQ(Metric("dmoe_router_generations_pending"), 1);
  // Stopping the router ends the running generation: it answers with the text so far.
  router_->Stop();
  ASSERT_EQ(running.wait_for(30s), std::future_status::ready);
  net::Response r = running.get();
  ASSERT_EQ(r.status, 200) << r.body_view();
  const json body = Body(r);
  EXPECT_EQ(body["finish_reason"], "error");
  EXPECT_EQ(body["error"], json({{"code", "unavailable"}, {"message", "the router is stopping"}}));
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 1000);
}

// A swarm of its own, whose servers this suite stops.
class GenerateSwarmFailureTest : public GenerateRouteTest {};

TEST_F(GenerateSwarmFailureTest, ASwarmThatStopsAnsweringEndsGenerationsWithAnErrorNotAHang) {
  StartRouter();
  const std::string spec = SwarmLmSpec("lm", 1024, /*k_min=*/2, /*forward_timeout_ms=*/2000);
  Publish(BuildLm(spec, 15, gating::ModelContext{MakeSwarm()}), spec);
  auto running = std::async(std::launch::async, [&] {
    return Generate("lm", {{"prompt", "In"}, {"max_tokens", 1000}, {"temperature", 0}});
  });
  ASSERT_TRUE(WaitMetricAtLeast("dmoe_router_generated_tokens_total", 3));
  for (auto* server : servers_) server->Stop();

  // Tokens were generated: 200 with the text so far and the error beside it.
  ASSERT_EQ(running.wait_for(60s), std::future_status::ready) << "the generation hangs";
  net::Response r = running.get();
  ASSERT_EQ(r.status, 200) << r.body_view();
  json body = Body(r);
  EXPECT_EQ(body["finish_reason"], "error");
  EXPECT_EQ(body["error"]["code"], "unavailable");
  EXPECT_GE(body["usage"]["completion_tokens"].get<int>(), 3);
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 1000);

  // No token at all: the error alone, as PROTOCOL section 3 says.
  r = Generate("lm", {{"prompt", "In"}, {"max_tokens", 5}});
  EXPECT_EQ(r.status, 503) << r.body_view();
  body = Body(r);
  EXPECT_EQ(body["error"]["code"], "unavailable");
  EXPECT_EQ(r.headers.Get("Retry-After").value_or(""), "1");
}

}  // namespace
}  // namespace dmoe::router
