// The router's bounded inference queue (issue 12, part 4): when every place is taken by inferences
// that wait on a stalling expert, further requests are answered 503 unavailable with Retry-After at
// once instead of piling up, and the places come back when that work ends. In process: a router,
// a DHT node and a RogueServer that never answers, on loopback.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "gating/model.h"
#include "gating/swarm.h"
#include "model/model_spec.h"
#include "net/http_client.h"
#include "router/router.h"
#include "tensor/torch_tensor.h"
#include "tests/hostile/rogue_server.h"
#include "tests/integration/swarm_util.h"
#include "tests/testing/in_process_router.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// One moe layer over a one-expert grid whose expert stalls: each inference waits the layer's whole
// forward timeout (1.5 s) before it is answered.
constexpr char kSpec[] = R"({"name": "slow", "input_dim": 4, "layers": [
  {"type": "moe", "uid_prefix": "ffn", "grid": [1], "k_best": 1, "k_min": 1,
   "forward_timeout_ms": 1500, "timeout_after_k_min_ms": 200}]})";
constexpr int kQueue = 2;

struct InferAnswer {
  net::Response response;
  double seconds = 0;
};

InferAnswer Infer(const std::string& router) {
  const auto start = Clock::now();
  const std::string json = nlohmann::json({{"inputs", {{0.1, 0.2, 0.3, 0.4}}}}).dump();
  auto r = net::Fetch("POST", router + "/v1/models/slow/infer",
                      {{"Content-Type", "application/json"}}, net::Bytes(json.begin(), json.end()),
                      20s, net::RequestOptions{.raw_error_responses = true});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return {r.ok() ? std::move(r).value() : net::Response{},
          std::chrono::duration<double>(Clock::now() - start).count()};
}

bool RefusedAsQueueFull(const net::Response& r) {
  auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
  return r.status == 503 && r.headers.Get("Retry-After") == "1" && j.is_object() &&
         j.contains("error") && j["error"]["code"] == "unavailable" &&
         j["error"]["message"].get<std::string>().find("inference requests queued") !=
             std::string::npos;
}

TEST(RouterQueueTest, AFullInferenceQueueAnswers503AtOnceAndFreesWhenWorkEnds) {
  testing::TempDir dir("dmoe-router-queue");
  dht::DhtOptions dht_options;
  dht_options.clock = &RealClock::Instance();
  dht_options.listen = "127.0.0.1:0";
  auto bootstrap = dht::Dht::Start(std::move(dht_options));
  ASSERT_TRUE(bootstrap.ok()) << bootstrap.status().ToString();
  const std::string dht_endpoint = "127.0.0.1:" + std::to_string((*bootstrap)->port());

  auto rogue = RogueServer::Start({RogueAnswer::kStall, {"ffn.0"}, 4, dht_endpoint});
  ASSERT_TRUE(rogue.ok()) << rogue.status().ToString();

  router::RouterOptions o;
  o.db_dir = dir.Sub("router");
  o.inference_threads = 1;
  o.max_queued_inferences = kQueue;
  auto started =
      testing::StartInProcessRouter(std::move(o), testing::LoopbackDhtOptions({dht_endpoint}));
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<router::Router> router = std::move(started).value();

  // Publish the model's local parameters (the gating projection), built from the same spec.
  auto spec = model::ParseModelSpec(kSpec);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  auto offline = std::make_shared<gating::Swarm>(
      [](std::vector<std::string>, std::chrono::milliseconds,
         std::function<void(gating::ExpertDirectory::KeyResults)> done) { done({}); },
      RealClock::Instance());
  gating::DmoeModel model(*spec, gating::ModelContext{offline});
  std::vector<tensor::NamedTensor> state;
  for (const auto& [name, t] : model->StateDict()) state.push_back({name, t});
  auto blob = tensor::EncodeFromTorch(state, {{"spec", kSpec}, {"version", "1"}});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  auto put = net::Fetch("PUT", router->endpoint() + "/v1/models/slow",
                        {{"Content-Type", "application/x-safetensors"}}, std::move(*blob), 20s);
  ASSERT_TRUE(put.ok()) << put.status().ToString();

  // Two inferences take the queue's places and wait on the stalling expert; four more come while
  // they wait.
  std::vector<std::future<InferAnswer>> first;
  for (int i = 0; i < kQueue; ++i) {
    first.push_back(std::async(std::launch::async, Infer, router->endpoint()));
  }
  // Wait (polling /metrics, with a deadline) until both hold their places.
  const auto deadline = Clock::now() + 10s;
  std::optional<double> queued;
  do {
    auto metrics = net::Fetch("GET", router->endpoint() + "/metrics", {}, {}, 5s);
    ASSERT_TRUE(metrics.ok()) << metrics.status().ToString();
    queued = integration::PrometheusValue(std::string(metrics->body_view()),
                                          "dmoe_router_inferences_queued");
  } while (queued != kQueue && Clock::now() < deadline);
  ASSERT_EQ(queued, kQueue);
  std::vector<std::future<InferAnswer>> rest;
  for (int i = 0; i < 4; ++i) {
    rest.push_back(std::async(std::launch::async, Infer, router->endpoint()));
  }
  for (auto& f : rest) {
    InferAnswer a = f.get();
    EXPECT_TRUE(RefusedAsQueueFull(a.response))
        << a.response.status << " " << a.response.body_view();
    EXPECT_LT(a.seconds, 1.0) << "a full queue answers at once";
  }
  // The queued ones were computed: the expert never answered, so the router says unavailable,
  // but not because the queue was full, and only after the layer's forward timeout.
  for (auto& f : first) {
    InferAnswer a = f.get();
    EXPECT_FALSE(RefusedAsQueueFull(a.response)) << a.response.body_view();
    EXPECT_GE(a.seconds, 1.0);
  }
  // The places are free again: the next inference is taken, not refused.
  InferAnswer after = Infer(router->endpoint());
  EXPECT_FALSE(RefusedAsQueueFull(after.response)) << after.response.body_view();
  EXPECT_GE((*rogue)->requests(), 1) << "the inferences did reach the stalling expert";
  router->Stop();
}

}  // namespace
}  // namespace dmoe::hostile
