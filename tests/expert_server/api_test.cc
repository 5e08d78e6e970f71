// The expert server's API (PROTOCOL section 4) over real HTTP and WebSocket on loopback, with the
// server in this process so the tests can look at its runtime.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "core/clock.h"
#include "core/hex.h"
#include "core/request_auth.h"
#include "dht/dht.h"
#include "expert_server/expert.h"
#include "expert_server/process_memory.h"
#include "expert_server/server.h"
#include "gating/expert_caller.h"
#include "net/http_client.h"
#include "storage/expert_store.h"
#include "tensor/safetensors.h"
#include "tensor/torch_tensor.h"
#include "tests/testing/loopback_dht.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::expert_server {
namespace {

using namespace std::chrono_literals;
constexpr int64_t kDim = 8;
constexpr char kType[] = "application/x-safetensors";

std::vector<uint8_t> Blob(std::vector<tensor::NamedTensor> tensors,
                          std::map<std::string, std::string> meta = {}) {
  return std::move(tensor::EncodeFromTorch(tensors, meta)).value();
}

tensor::TorchPayload Parse(const net::Bytes& body) {
  auto p = tensor::DecodeToTorch(body);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(p).value() : tensor::TorchPayload{};
}

std::unique_ptr<Expert> LocalTwin(const std::string& uid) {
  ExpertConfig config;
  config.hidden_dim = kDim;
  config.seed = 11;
  return std::move(Expert::Create(ExpertRegistry::WithBuiltins(), uid, config, OptimizerOptions{}))
      .value();
}

class ApiTest : public ::testing::Test {
 protected:
  void StartServer(std::function<void(ExpertServerOptions&)> tweak = {}) {
    ExpertServerOptions o;
    o.clock = &RealClock::Instance();
    o.identity = Identity::Generate();
    o.uids = {"ffn.0.0", "ffn.0.1"};
    o.expert.hidden_dim = kDim;
    o.expert.seed = 11;
    if (tweak) tweak(o);
    auto s = ExpertServer::Start(std::move(o));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
    base_ = server_->endpoint();
  }
  void TearDown() override {
    if (server_) server_->Stop();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string Dir() {
    if (dir_.empty()) {
      char tmpl[] = "/tmp/dmoe_api_XXXXXX";
      dir_ = ::mkdtemp(tmpl);
    }
    return dir_;
  }

  net::Response Call(const std::string& method, const std::string& path, net::Bytes body = {},
                     net::Headers headers = {{"Content-Type", kType}}) {
    auto r = client_.Fetch(method, base_ + path, headers, std::move(body), 30s,
                           net::RequestOptions{.raw_error_responses = true});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : net::Response{};
  }
  static std::string ErrorCode(const net::Response& r) {
    auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
    if (j.is_discarded() || !j.contains("error"))
      return "<no error body: " + std::string(r.body_view()) + ">";
    return j["error"]["code"];
  }
  net::Response Forward(const std::string& uid, const at::Tensor& x) {
    return Call("POST", "/v1/experts/" + uid + "/forward", Blob({{"x", x}}));
  }

  std::unique_ptr<ExpertServer> server_;
  std::string base_;
  std::string dir_;
  net::HttpClient client_;
};

TEST_F(ApiTest, HealthProvesTheServersKeyOverAFreshChallenge) {
  StartServer();
  const std::string challenge = NewChallengeHex();
  net::Response health = Call("GET", "/v1/health?challenge=" + challenge);
  ASSERT_EQ(health.status, 200) << health.body_view();
  auto h = nlohmann::json::parse(health.body_view());
  EXPECT_EQ(h["peer_id"], server_->peer_id());
  Result<PublicKey> key = PublicKeyFromHex(h["public_key"].get<std::string>());
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(PeerIdOf(*key), server_->peer_id());
  EXPECT_TRUE(VerifyProof(*key, challenge, h["proof"].get<std::string>()));
  EXPECT_FALSE(VerifyProof(*key, NewChallengeHex(), h["proof"].get<std::string>()));
  // No challenge, no proof; a malformed one is invalid_argument.
  EXPECT_FALSE(nlohmann::json::parse(Call("GET", "/v1/health").body_view()).contains("proof"));
  net::Response bad = Call("GET", "/v1/health?challenge=xyz");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(ErrorCode(bad), "invalid_argument");
}

TEST_F(ApiTest, HealthAndExpertInfo) {
  StartServer();
  net::Response health = Call("GET", "/v1/health");
  ASSERT_EQ(health.status, 200);
  auto h = nlohmann::json::parse(health.body_view());
  EXPECT_EQ(h["status"], "ok");
  EXPECT_EQ(h["peer_id"], server_->peer_id());
  EXPECT_EQ(h["experts"], 2);
  EXPECT_TRUE(h["uptime_s"].is_number());

  auto all = nlohmann::json::parse(Call("GET", "/v1/experts").body_view());
  ASSERT_EQ(all["experts"].size(), 2u);
  auto info = nlohmann::json::parse(Call("GET", "/v1/experts/ffn.0.1").body_view());
  EXPECT_EQ(info["uid"], "ffn.0.1");
  EXPECT_EQ(info["type"], "ffn");
  EXPECT_EQ(info["hidden_dim"], kDim);
  EXPECT_EQ(info["step"], 0);
  EXPECT_EQ(info["params"], LocalTwin("ffn.0.1")->num_parameters());
  EXPECT_EQ(info["dtype"], "F32");
  EXPECT_EQ(info["inputs"][0]["name"], "x");
  EXPECT_EQ(info["outputs"][0]["name"], "y");

  net::Response missing = Call("GET", "/v1/experts/ffn.7.7");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(ErrorCode(missing), "not_found");
}

TEST_F(ApiTest, ForwardMatchesTheSameExpertComputedLocally) {
  StartServer();
  at::Tensor x = at::randn({5, kDim});
  net::Response r = Forward("ffn.0.1", x);
  ASSERT_EQ(r.status, 200) << r.body_view();
  EXPECT_EQ(r.content_type, kType);
  tensor::TorchPayload p = Parse(r.body);
  ASSERT_EQ(p.tensors.count("y"), 1u);
  EXPECT_EQ(p.metadata["uid"], "ffn.0.1");
  EXPECT_EQ(p.metadata["step"], "0");
  EXPECT_TRUE(
      at::allclose(p.tensors["y"], *LocalTwin("ffn.0.1")->Forward(x, std::nullopt), 1e-5, 1e-6));
  // ffn.0.0 is a different expert.
  EXPECT_FALSE(at::allclose(Parse(Forward("ffn.0.0", x).body).tensors["y"], p.tensors["y"]));
}

// CallLocal, for callers that host the experts in their own process: the answer a WebSocket
// message gets, with no socket; and the same refusals.
TEST_F(ApiTest, CallLocalAnswersAsAWebSocketMessage) {
  StartServer([&](ExpertServerOptions& o) {
    o.trainer_keys_path = Dir() + "/trainers";
    std::ofstream(o.trainer_keys_path) << Identity::Generate().public_key_hex() << "\n";
  });
  auto call = [&](std::vector<uint8_t> blob) {
    std::promise<std::vector<uint8_t>> answered;
    server_->CallLocal(blob, [&](std::vector<uint8_t> a) { answered.set_value(std::move(a)); });
    return Parse(answered.get_future().get());
  };
  at::Tensor x = at::randn({3, kDim});
  tensor::TorchPayload y =
      call(Blob({{"x", x}}, {{"id", "7"}, {"op", "forward"}, {"uid", "ffn.0.1"}}));
  EXPECT_EQ(y.metadata["id"], "7");
  ASSERT_EQ(y.tensors.count("y"), 1u);
  EXPECT_TRUE(
      at::allclose(y.tensors["y"], *LocalTwin("ffn.0.1")->Forward(x, std::nullopt), 1e-5, 1e-6));
  // As on a connection whose upgrade was not signed, a server with trainer keys refuses backward.
  tensor::TorchPayload refused =
      call(Blob({{"x", x}, {"grad_y", x}}, {{"id", "8"}, {"op", "backward"}, {"uid", "ffn.0.1"}}));
  EXPECT_EQ(refused.metadata["id"], "8");
  EXPECT_EQ(refused.metadata["error_code"], "unauthenticated");
  EXPECT_EQ(server_->stats().steps.at("ffn.0.1"), 0);
  tensor::TorchPayload bad =
      call(Blob({{"x", x}}, {{"id", "9"}, {"op", "fly"}, {"uid", "ffn.0.1"}}));
  EXPECT_EQ(bad.metadata["error_code"], "invalid_argument");
}

// gating::ExpertCaller with the server as a local endpoint: its calls reach the server with no
// connection (the endpoint's host does not even resolve), and a call given up on (Forget) is
// never answered.
TEST_F(ApiTest, AnExpertCallerReachesALocalEndpointWithoutTheNetwork) {
  StartServer();
  const std::string endpoint = "http://in-process.invalid:9";
  std::mutex mu;
  std::vector<std::pair<net::Bytes, std::function<void(net::Bytes)>>> held;
  bool hold = false;
  gating::CallerOptions options;
  options.local[endpoint] = [&](net::Bytes request, std::function<void(net::Bytes)> answer) {
    std::lock_guard<std::mutex> lock(mu);
    if (hold) return held.emplace_back(std::move(request), std::move(answer)), void();
    server_->CallLocal(request, std::move(answer));
  };
  gating::ExpertCaller caller(RealClock::Instance(), options);
  at::Tensor x = at::randn({2, kDim});
  auto send = [&](const std::string& id, std::promise<gating::CallOutcome>* done) {
    caller.Send(endpoint, id, Blob({{"x", x}}, {{"id", id}, {"op", "forward"}, {"uid", "ffn.0.0"}}),
                RealClock::Instance().Now() + 10s,
                [done](gating::CallOutcome o) { done->set_value(std::move(o)); });
  };
  std::promise<gating::CallOutcome> first;
  send(caller.NextId(), &first);
  gating::CallOutcome outcome = first.get_future().get();
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.ToString();
  EXPECT_TRUE(at::allclose(Parse(outcome.blob).tensors["y"],
                           *LocalTwin("ffn.0.0")->Forward(x, std::nullopt), 1e-5, 1e-6));

  hold = true;
  std::promise<gating::CallOutcome> forgotten, kept;
  const std::string forgotten_id = caller.NextId(), kept_id = caller.NextId();
  send(forgotten_id, &forgotten);
  send(kept_id, &kept);
  ASSERT_EQ(held.size(), 2u);
  caller.Forget(endpoint, forgotten_id);
  std::atomic<int> answered{0};
  for (auto& [request, answer] : held) {
    server_->CallLocal(request, [&answered, a = std::move(answer)](net::Bytes blob) {
      a(std::move(blob));
      ++answered;
    });
  }
  gating::CallOutcome second = kept.get_future().get();
  EXPECT_TRUE(second.status.ok()) << second.status.ToString();
  EXPECT_EQ(Parse(second.blob).metadata["id"], kept_id);
  // The forgotten call's answer came too, and was dropped.
  ASSERT_TRUE(testing::PollUntil([&] { return answered.load() == 2; }, 10s));
  EXPECT_EQ(forgotten.get_future().wait_for(0s), std::future_status::timeout);
}

TEST_F(ApiTest, AnswersInTheInputsHalfPrecisionDtype) {
  StartServer();
  at::Tensor x = at::randn({3, kDim});
  at::Tensor y32 = Parse(Forward("ffn.0.0", x).body).tensors["y"];
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    net::Response r = Forward("ffn.0.0", x.to(dtype));
    ASSERT_EQ(r.status, 200);
    at::Tensor y = Parse(r.body).tensors["y"];
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_TRUE(at::allclose(y.to(at::kFloat), y32, 0.05, 0.05));
  }
}

TEST_F(ApiTest, NanRateAnswersForwardWithNanButLeavesBackwardAlone) {
  StartServer([](ExpertServerOptions& o) { o.nan_rate = 1.0; });
  at::Tensor x = at::randn({3, kDim});
  net::Response r = Forward("ffn.0.0", x);
  ASSERT_EQ(r.status, 200) << r.body_view();
  at::Tensor y = Parse(r.body).tensors["y"];
  ASSERT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(at::isnan(y).all().item<bool>());
  net::Response b =
      Call("POST", "/v1/experts/ffn.0.0/backward", Blob({{"x", x}, {"grad_y", at::ones_like(x)}}));
  ASSERT_EQ(b.status, 200) << b.body_view();
  EXPECT_TRUE(at::isfinite(Parse(b.body).tensors["grad_x"]).all().item<bool>());
}

TEST_F(ApiTest, BadRequestsGetTheProtocolsErrors) {
  StartServer([](ExpertServerOptions& o) { o.max_body_bytes = 1 << 20; });
  const std::string fwd = "/v1/experts/ffn.0.0/forward";
  struct Case {
    std::string what;
    net::Response response;
    int status;
    std::string code;
  };
  std::vector<uint8_t> good = Blob({{"x", at::randn({2, kDim})}});
  std::vector<uint8_t> truncated(good.begin(), good.begin() + good.size() - 3);
  std::vector<Case> cases = {
      {"garbage body", Call("POST", fwd, net::Bytes{1, 2, 3, 4, 5, 6, 7, 8, 9}), 400,
       "invalid_argument"},
      {"truncated blob", Call("POST", fwd, truncated), 400, "invalid_argument"},
      {"wrong tensor name", Call("POST", fwd, Blob({{"z", at::randn({2, kDim})}})), 400,
       "invalid_argument"},
      {"extra tensor",
       Call("POST", fwd, Blob({{"x", at::randn({2, kDim})}, {"w", at::randn({1})}})), 400,
       "invalid_argument"},
      {"wrong width", Call("POST", fwd, Blob({{"x", at::randn({2, kDim + 1})}})), 400,
       "invalid_argument"},
      {"wrong rank", Call("POST", fwd, Blob({{"x", at::randn({2, 3, kDim})}})), 400,
       "invalid_argument"},
      {"empty batch", Call("POST", fwd, Blob({{"x", at::randn({0, kDim})}})), 400,
       "invalid_argument"},
      {"integer dtype", Call("POST", fwd, Blob({{"x", at::ones({2, kDim}, at::kLong)}})), 400,
       "invalid_argument"},
      {"unknown uid", Call("POST", "/v1/experts/ffn.5.5/forward", good), 404, "not_found"},
      {"text content type", Call("POST", fwd, good, {{"Content-Type", "text/plain"}}), 415,
       "unsupported_media_type"},
      {"no content type", Call("POST", fwd, good, {}), 415, "unsupported_media_type"},
      {"oversized body", Call("POST", fwd, net::Bytes(2 << 20, 0)), 413, "payload_too_large"},
      {"backward without grad_y", Call("POST", "/v1/experts/ffn.0.0/backward", good), 400,
       "invalid_argument"},
      {"unparsable step_seen",
       Call("POST", "/v1/experts/ffn.0.0/backward",
            Blob({{"x", at::randn({2, kDim})}, {"grad_y", at::randn({2, kDim})}},
                 {{"step_seen", "x1"}})),
       400, "invalid_argument"},
      {"grad_y of another shape",
       Call("POST", "/v1/experts/ffn.0.0/backward",
            Blob({{"x", at::randn({2, kDim})}, {"grad_y", at::randn({3, kDim})}})),
       400, "invalid_argument"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.response.status, c.status) << c.what << ": " << c.response.body_view();
    EXPECT_EQ(ErrorCode(c.response), c.code) << c.what;
  }
  // The server is unharmed: no expert stepped, and it still answers.
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 0);
  EXPECT_EQ(Forward("ffn.0.0", at::randn({1, kDim})).status, 200);
}

// PROTOCOL section 1: a path whose uid breaks the grammar is a bad request (400 invalid_argument)
// on every route that takes a uid; a well-formed uid the server does not host stays 404.
TEST_F(ApiTest, MalformedUidInAPathIsInvalidArgument) {
  StartServer();
  std::vector<uint8_t> fwd = Blob({{"x", at::randn({2, kDim})}});
  std::vector<uint8_t> bwd = Blob({{"x", at::randn({2, kDim})}, {"grad_y", at::randn({2, kDim})}});
  for (const std::string uid :
       {"ffn.01", "1ffn.2", "ffn.1.2.3.4.5.6", "ffn.1000000", "ffn", "ffn..1", "ffn.-1"}) {
    const std::string base = "/v1/experts/" + uid;
    for (const net::Response& r : {Call("GET", base), Call("POST", base + "/forward", fwd),
                                   Call("POST", base + "/backward", bwd)}) {
      EXPECT_EQ(r.status, 400) << uid << ": " << r.body_view();
      EXPECT_EQ(ErrorCode(r), "invalid_argument") << uid;
    }
  }
  for (const net::Response& r :
       {Call("GET", "/v1/experts/ffn.5.5"), Call("POST", "/v1/experts/ffn.5.5/forward", fwd),
        Call("POST", "/v1/experts/ffn.5.5/backward", bwd)}) {
    EXPECT_EQ(r.status, 404) << r.body_view();
    EXPECT_EQ(ErrorCode(r), "not_found");
  }
  EXPECT_EQ(Call("GET", "/v1/experts/ffn.0.1").status, 200);
}

TEST_F(ApiTest, BackwardReturnsGradXAndStepsTheExpert) {
  StartServer();
  auto twin = LocalTwin("ffn.0.0");
  at::Tensor x = at::randn({4, kDim}), g = at::randn({4, kDim});
  net::Response r = Call("POST", "/v1/experts/ffn.0.0/backward",
                         Blob({{"x", x}, {"grad_y", g}}, {{"step_seen", "0"}}));
  ASSERT_EQ(r.status, 200) << r.body_view();
  tensor::TorchPayload p = Parse(r.body);
  EXPECT_TRUE(at::allclose(p.tensors["grad_x"], *twin->Backward(x, g, std::nullopt), 1e-5, 1e-6));
  EXPECT_EQ(p.metadata["step"], "1");
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 1);
  // After the same update, both compute the same forward.
  at::Tensor probe = at::randn({2, kDim});
  EXPECT_TRUE(at::allclose(Parse(Forward("ffn.0.0", probe).body).tensors["y"],
                           *twin->Forward(probe, std::nullopt), 1e-5, 1e-6));
}

TEST_F(ApiTest, NanGradientLeavesWeightsBitIdenticalAndIsCounted) {
  StartServer();
  at::Tensor probe = at::randn({3, kDim});
  net::Bytes before = Forward("ffn.0.0", probe).body;
  at::Tensor g = at::randn({2, kDim});
  g[1][2] = std::numeric_limits<float>::quiet_NaN();
  net::Response r = Call("POST", "/v1/experts/ffn.0.0/backward",
                         Blob({{"x", at::randn({2, kDim})}, {"grad_y", g}}));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorCode(r), "invalid_argument");
  g[1][2] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Call("POST", "/v1/experts/ffn.0.0/backward",
                 Blob({{"x", at::randn({2, kDim})}, {"grad_y", g}}))
                .status,
            400);
  EXPECT_EQ(Forward("ffn.0.0", probe).body, before);  // bit-identical answer, same step
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 0);
  std::string metrics(Call("GET", "/metrics").body_view());
  EXPECT_NE(metrics.find("dmoe_refused_gradients_total{reason=\"nonfinite\"} 2"), std::string::npos)
      << metrics;
}

TEST_F(ApiTest, StaleGradientsAreRefused) {
  StartServer([](ExpertServerOptions& o) { o.runtime.max_staleness = 1; });
  auto backward = [&](const std::string& step_seen) {
    return Call("POST", "/v1/experts/ffn.0.0/backward",
                Blob({{"x", at::randn({1, kDim})}, {"grad_y", at::randn({1, kDim})}},
                     {{"step_seen", step_seen}}));
  };
  for (int i = 0; i < 3; ++i) ASSERT_EQ(backward(std::to_string(i)).status, 200);
  net::Response stale = backward("0");
  EXPECT_EQ(stale.status, 400);
  EXPECT_NE(std::string(stale.body_view()).find("stale"), std::string::npos);
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 3);
}

TEST_F(ApiTest, ConcurrentRequestsAreMergedIntoOneBatch) {
  StartServer([](ExpertServerOptions& o) {
    o.runtime.max_batch_size = 32;           // 8 requests x 4 samples fill exactly one batch
    o.runtime.batch_timeout_us = 5'000'000;  // so the batch runs when full, not on time
  });
  std::mutex mu;
  std::condition_variable cv;
  int answered = 0, ok = 0;
  for (int i = 0; i < 8; ++i) {
    client_.Request("POST", base_ + "/v1/experts/ffn.0.1/forward", {{"Content-Type", kType}},
                    Blob({{"x", at::randn({4, kDim})}}), std::chrono::steady_clock::now() + 30s,
                    [&](Result<net::Response> r) {
                      std::lock_guard<std::mutex> lock(mu);
                      ++answered;
                      ok += r.ok() && r->status == 200;
                      cv.notify_all();
                    });
  }
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 30s, [&] { return answered == 8; }));
  EXPECT_EQ(ok, 8);
  ExpertServerStats stats = server_->stats();
  EXPECT_EQ(stats.batches, 1);
  EXPECT_EQ(stats.tasks, 8);
  EXPECT_EQ(stats.samples, 32);
}

// A budget smaller than any request lets requests in one at a time: all are answered, none is
// merged with another, and nothing stays held. /metrics shows the budget and, once the process
// has set up its memory as dmoe-server does, the tensor allocator.
TEST_F(ApiTest, HeldRequestBytesAreBoundedAndReported) {
  ConfigureProcessMemory();
  StartServer([](ExpertServerOptions& o) { o.max_held_request_bytes = 64; });
  std::unique_ptr<Expert> twin = LocalTwin("ffn.0.1");
  constexpr int kRequests = 8;
  std::vector<at::Tensor> xs;
  for (int i = 0; i < kRequests; ++i) xs.push_back(at::randn({4, kDim}));
  std::mutex mu;
  std::condition_variable cv;
  std::vector<net::Response> answers(kRequests);
  int answered = 0;
  for (int i = 0; i < kRequests; ++i) {
    client_.Request("POST", base_ + "/v1/experts/ffn.0.1/forward", {{"Content-Type", kType}},
                    Blob({{"x", xs[i]}}), std::chrono::steady_clock::now() + 30s,
                    [&, i](Result<net::Response> r) {
                      std::lock_guard<std::mutex> lock(mu);
                      if (r.ok()) answers[i] = std::move(r).value();
                      ++answered;
                      cv.notify_all();
                    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 30s, [&] { return answered == kRequests; }));
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(answers[i].status, 200) << answers[i].body_view();
    EXPECT_TRUE(at::allclose(Parse(answers[i].body).tensors["y"],
                             *twin->Forward(xs[i], std::nullopt), 1e-5, 1e-6));
  }
  EXPECT_EQ(server_->stats().batches, kRequests);
  std::string metrics;
  EXPECT_TRUE(dmoe::testing::PollUntil(
      [&] {
        metrics = std::string(Call("GET", "/metrics").body_view());
        return metrics.find("dmoe_held_request_bytes 0\n") != std::string::npos;
      },
      10s));
  EXPECT_NE(metrics.find("dmoe_requests_waiting 0\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("dmoe_tensor_memory_bytes{state=\"live\"}"), std::string::npos) << metrics;
}

// Bodies of 64 KiB and more travel in reused buffers of net::BufferPool (which held earlier
// requests and answers): the answers stay exact, and /metrics counts the reuse.
TEST_F(ApiTest, LargeBodiesReuseBuffersAndMetricsShowIt) {
  StartServer();
  std::unique_ptr<Expert> twin = LocalTwin("ffn.0.1");
  auto reused = [&] {
    const std::string metrics(Call("GET", "/metrics").body_view());
    const std::string key = "dmoe_buffer_pool_takes_total{result=\"reused\"} ";
    const size_t at = metrics.find(key);
    EXPECT_NE(at, std::string::npos) << metrics;
    return at == std::string::npos ? -1 : std::atoll(metrics.c_str() + at + key.size());
  };
  const at::Tensor x = at::randn({4096, kDim});  // 128 KiB in, 128 KiB out
  ASSERT_EQ(Forward("ffn.0.1", x).status, 200);  // warms the pool
  const int64_t before = reused();
  constexpr int kCalls = 5;
  for (int i = 0; i < kCalls; ++i) {
    net::Response r = Forward("ffn.0.1", x);
    ASSERT_EQ(r.status, 200) << r.body_view();
    EXPECT_TRUE(
        at::allclose(Parse(r.body).tensors["y"], *twin->Forward(x, std::nullopt), 1e-5, 1e-6));
  }
  // Per call the server takes a request body and an answer buffer, and this process's client an
  // answer body; the server gives its answer buffer back after the client has it, so a call may
  // find it not back yet: at least one reused per call.
  EXPECT_GE(reused() - before, kCalls);
}

// A WebSocket client that collects answers.
class WsPeer {
 public:
  Status Connect(const std::string& base, net::Headers headers = {}) {
    std::string url = "ws" + base.substr(4) + "/v1/ws";
    std::promise<Result<std::shared_ptr<net::WsConnection>>> connected;
    net::WsHandlers handlers;
    handlers.on_message = [this](const std::shared_ptr<net::WsConnection>&, net::Bytes m) {
      std::lock_guard<std::mutex> lock(mu_);
      messages_.push_back(std::move(m));
      cv_.notify_all();
    };
    client_.Connect(
        url, headers, handlers, std::chrono::steady_clock::now() + 10s,
        [&](Result<std::shared_ptr<net::WsConnection>> c) { connected.set_value(std::move(c)); });
    auto c = connected.get_future().get();
    if (!c.ok()) return c.status();
    conn_ = *c;
    return Status::Ok();
  }
  void Send(std::vector<uint8_t> blob) { ASSERT_TRUE(conn_->Send(std::move(blob)).ok()); }
  // The next answer, decoded.
  tensor::TorchPayload Next() {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, 30s, [&] { return !messages_.empty(); }));
    if (messages_.empty()) return {};
    net::Bytes m = std::move(messages_.front());
    messages_.pop_front();
    return Parse(m);
  }
  ~WsPeer() {
    if (conn_) conn_->Close();
  }

 private:
  net::WsClient client_;
  std::shared_ptr<net::WsConnection> conn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<net::Bytes> messages_;
};

std::vector<uint8_t> WsRequest(const std::string& id, const std::string& op, const std::string& uid,
                               std::vector<tensor::NamedTensor> tensors) {
  return Blob(std::move(tensors), {{"id", id}, {"op", op}, {"uid", uid}});
}

TEST_F(ApiTest, WebSocketForwardAndBackward) {
  StartServer();
  WsPeer ws;
  ASSERT_TRUE(ws.Connect(base_).ok());
  at::Tensor x = at::randn({2, kDim});
  ws.Send(WsRequest("a1", "forward", "ffn.0.1", {{"x", x}}));
  tensor::TorchPayload a = ws.Next();
  EXPECT_EQ(a.metadata["id"], "a1");
  EXPECT_EQ(a.metadata["uid"], "ffn.0.1");
  EXPECT_EQ(a.metadata["step"], "0");
  EXPECT_TRUE(
      at::allclose(a.tensors["y"], *LocalTwin("ffn.0.1")->Forward(x, std::nullopt), 1e-5, 1e-6));
  ws.Send(WsRequest("b2", "backward", "ffn.0.1", {{"x", x}, {"grad_y", at::randn({2, kDim})}}));
  tensor::TorchPayload b = ws.Next();
  EXPECT_EQ(b.metadata["id"], "b2");
  EXPECT_EQ(b.tensors.count("grad_x"), 1u);
  EXPECT_EQ(b.metadata["step"], "1");
}

TEST_F(ApiTest, WebSocketAnswersMayComeOutOfOrder) {
  StartServer([](ExpertServerOptions& o) {
    o.runtime.max_batch_size = 4;
    o.runtime.batch_timeout_us = 300'000;
  });
  WsPeer ws;
  ASSERT_TRUE(ws.Connect(base_).ok());
  // The first request is a partial batch that waits 300 ms; the second fills a batch at once.
  ws.Send(WsRequest("slow", "forward", "ffn.0.0", {{"x", at::randn({1, kDim})}}));
  ws.Send(WsRequest("fast", "forward", "ffn.0.1", {{"x", at::randn({4, kDim})}}));
  EXPECT_EQ(ws.Next().metadata["id"], "fast");
  EXPECT_EQ(ws.Next().metadata["id"], "slow");
}

TEST_F(ApiTest, WebSocketErrorsKeepTheConnectionOpen) {
  StartServer();
  WsPeer ws;
  ASSERT_TRUE(ws.Connect(base_).ok());
  ws.Send(net::Bytes{9, 9, 9});
  tensor::TorchPayload e = ws.Next();
  EXPECT_EQ(e.metadata["id"], "");
  EXPECT_EQ(e.metadata["error_code"], "invalid_argument");
  EXPECT_TRUE(e.tensors.empty());
  ws.Send(WsRequest("q", "explode", "ffn.0.0", {{"x", at::randn({1, kDim})}}));
  EXPECT_EQ(ws.Next().metadata["error_code"], "invalid_argument");
  ws.Send(WsRequest("r", "forward", "ffn.9.9", {{"x", at::randn({1, kDim})}}));
  tensor::TorchPayload nf = ws.Next();
  EXPECT_EQ(nf.metadata["id"], "r");
  EXPECT_EQ(nf.metadata["error_code"], "not_found");
  ws.Send(WsRequest("s", "forward", "ffn.0.0", {{"x", at::randn({1, kDim})}}));
  EXPECT_EQ(ws.Next().tensors.count("y"), 1u);
}

TEST_F(ApiTest, WebSocketInFlightLimitAnswersResourceExhausted) {
  StartServer([](ExpertServerOptions& o) {
    o.ws_max_in_flight = 2;
    o.runtime.batch_timeout_us = 1'000'000;  // keep the first two queued
  });
  WsPeer ws;
  ASSERT_TRUE(ws.Connect(base_).ok());
  for (const char* id : {"1", "2", "3"})
    ws.Send(WsRequest(id, "forward", "ffn.0.0", {{"x", at::randn({1, kDim})}}));
  tensor::TorchPayload first = ws.Next();
  EXPECT_EQ(first.metadata["id"], "3");
  EXPECT_EQ(first.metadata["error_code"], "resource_exhausted");
  std::set<std::string> rest = {ws.Next().metadata["id"], ws.Next().metadata["id"]};
  EXPECT_EQ(rest, (std::set<std::string>{"1", "2"}));
}

class AuthTest : public ApiTest {
 protected:
  void SetUp() override {
    std::string keys = Dir() + "/trainers";
    std::ofstream(keys) << trainer_.public_key_hex() << "\n";
    StartServer([&](ExpertServerOptions& o) { o.trainer_keys_path = keys; });
  }
  net::Headers Signed(const Identity& id, const std::string& method, const std::string& path,
                      const net::Bytes& body) {
    RequestSignature s =
        SignRequest(id, server_->peer_id(), method, path, body, RealClock::Instance().NowUnixMs());
    return {{"Content-Type", kType},
            {kKeyHeader, s.key_hex},
            {kTimestampHeader, s.timestamp_ms},
            {kNonceHeader, s.nonce_hex},
            {kSignatureHeader, s.signature_hex}};
  }
  Identity trainer_ = Identity::Generate();
  Identity stranger_ = Identity::Generate();
  const std::string path_ = "/v1/experts/ffn.0.0/backward";
};

TEST_F(AuthTest, BackwardNeedsAListedSignedFreshRequest) {
  net::Bytes body = Blob({{"x", at::randn({1, kDim})}, {"grad_y", at::randn({1, kDim})}});
  net::Response unsigned_r = Call("POST", path_, body);
  EXPECT_EQ(unsigned_r.status, 401);
  EXPECT_EQ(ErrorCode(unsigned_r), "unauthenticated");
  net::Response stranger = Call("POST", path_, body, Signed(stranger_, "POST", path_, body));
  EXPECT_EQ(stranger.status, 403);
  EXPECT_EQ(ErrorCode(stranger), "permission_denied");
  net::Headers good = Signed(trainer_, "POST", path_, body);
  EXPECT_EQ(Call("POST", path_, body, good).status, 200);
  net::Response replay = Call("POST", path_, body, good);
  EXPECT_EQ(replay.status, 401);
  EXPECT_NE(std::string(replay.body_view()).find("replayed"), std::string::npos);
  net::Bytes other = Blob({{"x", at::randn({1, kDim})}, {"grad_y", at::randn({1, kDim})}});
  EXPECT_EQ(Call("POST", path_, other, Signed(trainer_, "POST", path_, body)).status,
            401);  // body swapped
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 1);
  EXPECT_EQ(Forward("ffn.0.0", at::randn({1, kDim})).status, 200);  // forward stays open
}

TEST_F(AuthTest, WebSocketTrainingNeedsASignedUpgrade) {
  auto backward = WsRequest("b", "backward", "ffn.0.0",
                            {{"x", at::randn({1, kDim})}, {"grad_y", at::randn({1, kDim})}});
  {
    WsPeer open;
    ASSERT_TRUE(open.Connect(base_).ok());
    open.Send(WsRequest("f", "forward", "ffn.0.0", {{"x", at::randn({1, kDim})}}));
    EXPECT_EQ(open.Next().tensors.count("y"), 1u);
    open.Send(backward);
    EXPECT_EQ(open.Next().metadata["error_code"], "unauthenticated");
  }
  auto headers = [&](const Identity& id) {
    net::Headers h = Signed(id, "GET", "/v1/ws", {});
    h.Remove("Content-Type");
    return h;
  };
  WsPeer refused;
  Status s = refused.Connect(base_, headers(stranger_));
  EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.ToString();
  WsPeer trainer;
  ASSERT_TRUE(trainer.Connect(base_, headers(trainer_)).ok());
  trainer.Send(backward);
  tensor::TorchPayload r = trainer.Next();
  EXPECT_EQ(r.tensors.count("grad_x"), 1u) << r.metadata["error_message"];
  EXPECT_EQ(server_->stats().steps.at("ffn.0.0"), 1);
}

TEST(ServerStartTest, RefusesOpenTrainingOnAPublicAddress) {
  ExpertServerOptions o;
  o.uids = {"ffn.0"};
  o.expert.hidden_dim = kDim;
  o.listen_host = "0.0.0.0";
  o.identity = Identity::Generate();
  o.clock = nullptr;
  auto no_clock = ExpertServer::Start(o);
  ASSERT_FALSE(no_clock.ok());
  EXPECT_EQ(no_clock.status().code(), Code::kInvalidArgument);
  o.clock = &RealClock::Instance();
  auto refused = ExpertServer::Start(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--trainer-keys"), std::string::npos);
  // The same refusal from the options alone, as dmoe-server asks before it opens anything.
  EXPECT_EQ(ExpertServer::CheckOptions(o), refused.status());
  o.open_training = true;
  EXPECT_TRUE(ExpertServer::CheckOptions(o).ok());
  auto started = ExpertServer::Start(o);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  (*started)->Stop();
}

TEST(ServerStartTest, RefusesAMissingIdentityAndADhtNodeOfAnotherIdentity) {
  auto boot = dht::Dht::Start(testing::LoopbackDhtOptions());
  ASSERT_TRUE(boot.ok()) << boot.status().ToString();
  const Identity identity = Identity::Generate();
  dht::DhtOptions node_options = testing::LoopbackDhtOptions({(*boot)->local_address()});
  node_options.identity = identity;
  auto node = dht::Dht::Start(std::move(node_options));
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  ExpertServerOptions o;
  o.uids = {"ffn.0"};
  o.expert.hidden_dim = kDim;
  o.clock = &RealClock::Instance();
  o.dht = node->get();
  auto no_identity = ExpertServer::Start(o);
  ASSERT_FALSE(no_identity.ok());
  EXPECT_EQ(no_identity.status().code(), Code::kInvalidArgument);
  EXPECT_NE(no_identity.status().message().find("identity"), std::string::npos);
  // Its announcements would be signed by a key other than the one its peer id names.
  o.identity = Identity::Generate();
  auto other = ExpertServer::Start(o);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), Code::kInvalidArgument);
  EXPECT_NE(other.status().message().find(identity.peer_id()), std::string::npos)
      << other.status().message();
  o.identity = identity;
  auto started = ExpertServer::Start(o);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  EXPECT_EQ((*started)->peer_id(), identity.peer_id());
  (*started)->Stop();
  // The node is the caller's: the server's Stop left it running, and it still finds the
  // announcement the server made through it (a stopped node answers kUnavailable).
  EXPECT_TRUE(testing::PollUntil(
      [&] { return !(*node)->GetManyBlocking({"expert/ffn.0"}, 2s).front().records.empty(); },
      10s));
  (*node)->Stop();
  (*boot)->Stop();
}

TEST(ServerStartTest, CheckpointsIntoTheLentStoreAndLeavesItOpen) {
  testing::TempDir dir;
  auto store = storage::ExpertStore::Open(dir.Sub("db"), {.clock = &RealClock::Instance()});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ExpertServerOptions o;
  o.uids = {"ffn.0", "ffn.1"};
  o.expert.hidden_dim = kDim;
  o.clock = &RealClock::Instance();
  o.identity = Identity::Generate();
  o.store = store->get();
  auto server = ExpertServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  (*server)->Stop();  // writes the final checkpoint
  Result<std::vector<storage::ExpertSummary>> experts = (*store)->ListExperts();
  ASSERT_TRUE(experts.ok()) << experts.status().ToString();
  ASSERT_EQ(experts->size(), 2u);
  EXPECT_EQ(experts->front().uid, "ffn.0");
  EXPECT_TRUE((*store)->Close().ok());
}

}  // namespace
}  // namespace dmoe::expert_server
