// The whole system end to end with real processes on loopback (issue: train on Fashion-MNIST
// through the swarm and serve it): a DHT node, 4 expert servers on a 4x4 grid, the router, and
// dmoe-train; then inference through the router, its errors, and the dashboard in headless
// Chromium as a person would see it.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/identity.h"
#include "core/request_auth.h"
#include "data/fashion_mnist.h"
#include "data/text_corpus.h"
#include "net/http_client.h"
#include "net/sse.h"
#include "tensor/safetensors.h"
#include "tests/integration/server_test_util.h"
#include "tests/integration/swarm_util.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;

constexpr const char* kSpec = kFmnistTestSpec;

// A dmoe-dht and `servers` dmoe-servers hosting ffn.<i>.[0:4] each (swarm_util.h).
class Swarm {
 public:
  explicit Swarm(const testing::TempDir& dir, int servers = 4) {
    auto dht = StartDht();
    EXPECT_TRUE(dht.ok()) << dht.status().ToString();
    if (dht.ok()) dht_ = std::move(dht).value();
    for (int i = 0; i < servers; ++i) {
      auto s = StartServer(SwarmServerArgs(i, dht_.address, dir.Sub("server" + std::to_string(i))));
      EXPECT_TRUE(s.ok()) << s.status().ToString();
      if (s.ok()) servers_.push_back(std::move(s).value());
    }
  }
  const std::string& dht() const { return dht_.address; }
  std::vector<ServerProcess>& servers() { return servers_; }

 private:
  DhtProcess dht_;
  std::vector<ServerProcess> servers_;
};

Result<net::Response> Call(const std::string& method, const std::string& url,
                           const std::string& type, std::vector<uint8_t> body,
                           net::Headers headers = {}) {
  if (!type.empty()) headers.Set("Content-Type", type);
  return net::Fetch(method, url, headers, std::move(body), 60s,
                    net::RequestOptions{.raw_error_responses = true});
}

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::string ErrorCode(const net::Response& r) {
  auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
  return j.is_object() && j.contains("error") ? j["error"]["code"].get<std::string>() : "<none>";
}

class TrainE2eTest : public ::testing::Test {
 protected:
  testing::TempDir dir_{"dmoe-e2e"};
  Identity trainer_ = Identity::Generate();
  std::string keys_ = dir_.WriteFile("trainers", trainer_.public_key_hex() + "\n");
  std::string spec_ = dir_.WriteFile("spec.json", kSpec);
};

TEST_F(TrainE2eTest, TrainsThroughTheSwarmAndTheRouterServesTheModel) {
  ASSERT_TRUE(trainer_.SaveToFile(dir_.Sub("trainer.key")).ok());
  Swarm swarm(dir_);
  ASSERT_EQ(swarm.servers().size(), 4u);
  testing::RouterProcess router = StartSwarmRouter(swarm.dht(), dir_.Sub("router"), keys_);
  ASSERT_FALSE(router.endpoint.empty());

  testing::RunResult train = testing::Run({DMOE_TRAIN_BINARY,
                                           "--model",
                                           spec_,
                                           "--dht",
                                           swarm.dht(),
                                           "--router",
                                           router.endpoint,
                                           "--identity",
                                           dir_.Sub("trainer.key"),
                                           "--db",
                                           dir_.Sub("trainer"),
                                           "--steps",
                                           "300",
                                           "--batch-size",
                                           "64",
                                           "--eval-every",
                                           "0",
                                           "--publish-every",
                                           "100",
                                           "--eval-samples",
                                           "2000",
                                           "--threads",
                                           "1",
                                           "--log-level",
                                           "warn"},
                                          600s);
  ASSERT_EQ(train.exit_code, 0) << train.out << train.err;
  // Progress lines with every figure a person watches.
  EXPECT_TRUE(std::regex_search(
      train.out,
      std::regex(
          R"(step 300/300 loss [0-9.]+ train_acc [0-9.]+ samples/s [0-9.]+ experts/sample [0-9.]+)")))
      << train.out;
  // Versions only grow, and the last one published is what the router serves.
  std::vector<int64_t> versions;
  std::smatch m;
  const std::regex published(R"(published fmnist version (\d+))");
  for (auto it = std::sregex_iterator(train.out.begin(), train.out.end(), published);
       it != std::sregex_iterator(); ++it) {
    versions.push_back(std::stoll((*it)[1]));
  }
  ASSERT_EQ(versions.size(), 3u) << train.out;  // steps 100, 200 and the end
  EXPECT_TRUE(std::is_sorted(versions.begin(), versions.end()));
  EXPECT_LT(versions[0], versions[1]);
  ASSERT_TRUE(
      std::regex_search(train.out, m, std::regex(R"(done: steps 300 test_accuracy ([0-9.]+))")));
  const double accuracy = std::stod(m[1]);
  // 300 asynchronous steps land between 0.74 and 0.82 (18 runs, before and after issue 13's
  // refactor alike), so 0.75 failed now and then; 0.70 still shows the model learned (chance:
  // 0.10). That experts take part is asserted below: the router's answers name the experts they
  // used.
  std::printf("test accuracy after 300 steps: %.3f\n", accuracy);
  EXPECT_GE(accuracy, 0.70) << "test accuracy after 300 steps";

  auto models = Call("GET", router.endpoint + "/v1/models", "", {});
  ASSERT_TRUE(models.ok());
  auto mj = nlohmann::json::parse(models->body_view());
  ASSERT_EQ(mj["models"].size(), 1u);
  EXPECT_EQ(mj["models"][0]["version"], versions.back());
  EXPECT_EQ(mj["models"][0]["publisher"], trainer_.public_key_hex());

  // Classify 500 test images through the router (safetensors in, safetensors out).
  auto test = data::LoadFashionMnist(false);
  ASSERT_TRUE(test.ok());
  const int64_t n = 500;
  std::vector<float> x(n * 784);
  for (int64_t i = 0; i < n * 784; ++i) x[i] = test->pixels[i] / 255.0f;
  auto body = safetensors::Encode({{"x",
                                    safetensors::DType::kF32,
                                    {n, 784},
                                    {reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4}}});
  ASSERT_TRUE(body.ok());
  auto infer =
      Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/x-safetensors", *body);
  ASSERT_TRUE(infer.ok());
  ASSERT_EQ(infer->status, 200) << infer->body_view();
  auto decoded = safetensors::Decode(infer->body);
  ASSERT_TRUE(decoded.ok());
  const safetensors::TensorView* y = decoded->Find("y");
  ASSERT_NE(y, nullptr);
  ASSERT_EQ(y->shape, (std::vector<int64_t>{n, 10}));
  EXPECT_EQ(decoded->metadata.at("model_version"), std::to_string(versions.back()));
  const float* logits = reinterpret_cast<const float*>(y->data.data());
  int correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    int best = static_cast<int>(std::max_element(logits + i * 10, logits + i * 10 + 10) -
                                (logits + i * 10));
    correct += best == test->labels[i];
  }
  EXPECT_GE(correct / static_cast<double>(n), 0.70) << "router accuracy on 500 test images";

  // The CLI measures the same through the router, and lists the swarm the router sees.
  testing::RunResult cli = testing::Run({DMOE_CLI_BINARY, "infer", "--router", router.endpoint,
                                         "--model", "fmnist", "--fashion-mnist-test", "500"});
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(
      cli.out, "accuracy " +
                   [&] {
                     char buf[16];
                     std::snprintf(buf, sizeof(buf), "%.4f", correct / static_cast<double>(n));
                     return std::string(buf);
                   }() +
                   " on 500 Fashion-MNIST test images (model fmnist version " +
                   std::to_string(versions.back()) + ")\n");
  testing::RunResult experts =
      testing::Run({DMOE_CLI_BINARY, "experts", "--router", router.endpoint});
  ASSERT_EQ(experts.exit_code, 0) << experts.err;
  EXPECT_NE(experts.out.find("16 experts on 4 servers; 1 models"), std::string::npos)
      << experts.out;

  // JSON inference answers the same shape, with the experts each sample used.
  std::string row = "[";
  for (int i = 0; i < 784; ++i) row += (i ? "," : "") + std::to_string(test->pixels[i] / 255.0);
  row += "]";
  auto json = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json",
                   Bytes("{\"inputs\": [" + row + "]}"));
  ASSERT_TRUE(json.ok());
  ASSERT_EQ(json->status, 200) << json->body_view();
  auto jj = nlohmann::json::parse(json->body_view());
  EXPECT_EQ(jj["outputs"][0].size(), 10u);
  EXPECT_GE(jj["experts"][0].size(), 1u);
  EXPECT_EQ(jj["model_version"], versions.back());

  // A version never goes back: an older one is refused, even signed by the trainer.
  auto state = safetensors::Encode(
      {{"w", safetensors::DType::kF32, {1}, {reinterpret_cast<const uint8_t*>(x.data()), 4}}},
      {{"spec", kSpec}, {"version", std::to_string(versions[0])}});
  ASSERT_TRUE(state.ok());
  auto router_health = Call("GET", router.endpoint + "/v1/health", "", {});
  ASSERT_TRUE(router_health.ok());
  const std::string router_peer_id =
      nlohmann::json::parse(router_health->body_view())["peer_id"].get<std::string>();
  RequestSignature sig = SignRequest(trainer_, router_peer_id, "PUT", "/v1/models/fmnist", *state,
                                     RealClock::Instance().NowUnixMs());
  auto older =
      Call("PUT", router.endpoint + "/v1/models/fmnist", "application/x-safetensors", *state,
           {{kKeyHeader, sig.key_hex},
            {kTimestampHeader, sig.timestamp_ms},
            {kNonceHeader, sig.nonce_hex},
            {kSignatureHeader, sig.signature_hex}});
  ASSERT_TRUE(older.ok());
  EXPECT_EQ(older->status, 400) << older->body_view();
  auto unsigned_put =
      Call("PUT", router.endpoint + "/v1/models/fmnist", "application/x-safetensors", *state);
  ASSERT_TRUE(unsigned_put.ok());
  EXPECT_EQ(unsigned_put->status, 401);
  EXPECT_EQ(
      nlohmann::json::parse(
          Call("GET", router.endpoint + "/v1/models", "", {})->body_view())["models"][0]["version"],
      versions.back());

  // Router errors (PROTOCOL section 3).
  auto wrong_width = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json",
                          Bytes("{\"inputs\": [[1, 2, 3]]}"));
  EXPECT_EQ(wrong_width->status, 400);
  EXPECT_EQ(ErrorCode(*wrong_width), "invalid_argument");
  std::string huge = "[1e300";  // a finite double, an infinite float
  for (int i = 1; i < 784; ++i) huge += ",0";
  auto overflow = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json",
                       Bytes("{\"inputs\": [" + huge + "]]}"));
  EXPECT_EQ(overflow->status, 400) << overflow->body_view();
  auto empty = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json",
                    Bytes("{\"inputs\": []}"));
  EXPECT_EQ(empty->status, 400);
  auto garbage =
      Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json", Bytes("{nope"));
  EXPECT_EQ(garbage->status, 400);
  auto unknown = Call("POST", router.endpoint + "/v1/models/nope/infer", "application/json",
                      Bytes("{\"inputs\": [[1]]}"));
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(ErrorCode(*unknown), "not_found");
  auto media = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "text/plain", Bytes("x"));
  EXPECT_EQ(media->status, 415);

  // With every server gone and their records expired, inference is unavailable, not a crash.
  for (ServerProcess& s : swarm.servers()) s.process->Stop(SIGKILL, 10s);
  bool unavailable = testing::PollUntil(
      [&] {
        auto r = Call("POST", router.endpoint + "/v1/models/fmnist/infer", "application/json",
                      Bytes("{\"inputs\": [" + row + "]}"));
        return r.ok() && r->status == 503 && ErrorCode(*r) == "unavailable";
      },
      60s, 500ms);
  EXPECT_TRUE(unavailable);
}

// The page at `url` as a person sees it: headless Chromium renders it (running its script) and
// dumps the DOM.
std::string DumpDom(const std::string& url, const testing::TempDir& dir) {
  return testing::Run(
             {"/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--user-data-dir=" + dir.Sub("chromium"),
              "--virtual-time-budget=4000", "--dump-dom", url},
             60s)
      .out;
}

// The dashboard's expert rows and their status.
std::map<std::string, std::string> DashboardStatuses(const std::string& url,
                                                     const testing::TempDir& dir) {
  const std::string dom = DumpDom(url, dir);
  std::map<std::string, std::string> statuses;
  // The page script holds the row template too; its placeholders start with "$".
  std::regex row(R"re(<tr class="expert-row" data-uid="([^"$]+)" data-status="([^"$]+)")re");
  for (auto it = std::sregex_iterator(dom.begin(), dom.end(), row); it != std::sregex_iterator();
       ++it) {
    statuses[(*it)[1]] = (*it)[2];
  }
  return statuses;
}

TEST_F(TrainE2eTest, DashboardShowsLiveExpertsAndAKilledServerGoingDown) {
  if (access("/usr/bin/chromium", X_OK) != 0)
    FAIL() << "chromium is missing: scripts/setup installs it";
  Swarm swarm(dir_);
  ASSERT_EQ(swarm.servers().size(), 4u);
  testing::RouterProcess router = StartSwarmRouter(swarm.dht(), dir_.Sub("router"), keys_);
  std::map<std::string, std::string> seen;
  bool all_alive = testing::PollUntil(
      [&] {
        seen = DashboardStatuses(router.endpoint + "/", dir_);
        return seen.size() == 16 &&
               std::all_of(seen.begin(), seen.end(), [](auto& kv) { return kv.second == "alive"; });
      },
      60s, 500ms);
  std::string listing;
  for (auto& [uid, status] : seen) listing += uid + "=" + status + " ";
  ASSERT_TRUE(all_alive) << "rows seen: " << listing;

  swarm.servers()[2].process->Stop(SIGKILL, 10s);
  bool down = testing::PollUntil(
      [&] {
        seen = DashboardStatuses(router.endpoint + "/", dir_);
        int gone = 0, alive = 0;
        for (auto& [uid, status] : seen) {
          if (uid.rfind("ffn.2.", 0) == 0 && (status == "unreachable" || status == "stale")) ++gone;
          if (uid.rfind("ffn.2.", 0) != 0 && status == "alive") ++alive;
        }
        return gone == 4 && alive == 12;
      },
      60s, 500ms);
  EXPECT_TRUE(down) << "rows seen: " << seen.size();
}

// A trainer stopped with SIGTERM finishes its step, reports the accuracy of what it stops with,
// checkpoints, and exits 0; started again on the same --db it resumes from that step.
TEST_F(TrainE2eTest, AStoppedTrainerReportsItsAccuracyAndResumesFromItsCheckpoint) {
  Swarm swarm(dir_);
  ASSERT_EQ(swarm.servers().size(), 4u);
  auto trainer_args = [&](const std::string& steps) {
    return std::vector<std::string>{DMOE_TRAIN_BINARY,
                                    "--model",
                                    spec_,
                                    "--dht",
                                    swarm.dht(),
                                    "--db",
                                    dir_.Sub("trainer"),
                                    "--steps",
                                    steps,
                                    "--batch-size",
                                    "32",
                                    "--eval-every",
                                    "0",
                                    "--publish-every",
                                    "0",
                                    "--eval-samples",
                                    "500",
                                    "--log-every",
                                    "10",
                                    "--threads",
                                    "1",
                                    "--log-level",
                                    "warn"};
  };
  auto first = testing::Process::Spawn(trainer_args("100000"));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE((*first)->WaitForLine("step 20/100000 ", 300s)) << (*first)->stderr_text();
  ASSERT_TRUE((*first)->Signal(SIGTERM));
  auto eval = (*first)->WaitForLine("eval step ", 120s);
  ASSERT_TRUE(eval.has_value()) << (*first)->stderr_text();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(*eval, m, std::regex(R"(eval step (\d+) test_accuracy ([0-9.]+))")))
      << *eval;
  const int64_t stopped_at = std::stoll(m[1]);
  EXPECT_GE(stopped_at, 20);
  EXPECT_LT(stopped_at, 100000);
  EXPECT_GT(std::stod(m[2]), 0.1) << "better than chance after " << stopped_at << " steps";
  auto done = (*first)->WaitForLine("done: steps ", 60s);
  ASSERT_TRUE(done.has_value());
  std::smatch d;
  ASSERT_TRUE(
      std::regex_search(*done, d, std::regex(R"(done: steps (\d+) test_accuracy ([0-9.]+))")))
      << *done;
  EXPECT_EQ(std::stoll(d[1]), stopped_at);
  EXPECT_NEAR(std::stod(d[2]), std::stod(m[2]), 1e-4);
  std::optional<int> status = (*first)->Wait(30s);
  ASSERT_TRUE(status.has_value()) << "dmoe-train did not exit after SIGTERM";
  ASSERT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << (*first)->stderr_text();

  const std::string target = std::to_string(stopped_at + 10);
  testing::RunResult second = testing::Run(trainer_args(target), 300s);
  ASSERT_EQ(second.exit_code, 0) << second.out << second.err;
  EXPECT_NE(second.out.find("resumed from step " + std::to_string(stopped_at) + "\n"),
            std::string::npos)
      << second.out;
  EXPECT_NE(second.out.find("step " + target + "/" + target + " "), std::string::npos)
      << second.out;
  EXPECT_NE(second.out.find("done: steps " + target + " "), std::string::npos) << second.out;
}

// A byte-level transformer whose two ffn blocks are the swarm's experts (width 64, both blocks on
// the one ffn grid the test swarm hosts).
constexpr char kTextSpec[] = R"({"name": "kjv_e2e", "input": "tokens", "vocab": 256,
  "max_len": 64, "layers": [{"type": "embedding", "dim": 64}, {"type": "positions"},
    {"type": "attention", "heads": 4},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 1, "forward_timeout_ms": 5000, "timeout_after_k_min_ms": 300, "backward_k_min": 1,
     "backward_timeout_ms": 5000},
    {"type": "attention", "heads": 4},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2,
     "k_min": 1, "forward_timeout_ms": 5000, "timeout_after_k_min_ms": 300, "backward_k_min": 1,
     "backward_timeout_ms": 5000},
    {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";

// The text of a generate stream (Server-Sent Events) and its last event, read with the client a
// program would use.
struct Streamed {
  int status = 0;
  std::string content_type;
  std::string text;
  int events = 0;
  nlohmann::json last;
};
Streamed GenerateStream(const std::string& url, const nlohmann::json& body) {
  Streamed s;
  net::SseParser parser;
  const std::string payload = body.dump();
  Result<net::Response> head =
      net::FetchStream("POST", url, {{"Content-Type", "application/json"}}, Bytes(payload), 120s,
                       [&](std::string_view piece) {
                         EXPECT_TRUE(parser
                                         .Feed(piece,
                                               [&](net::SseMessage m) {
                                                 nlohmann::json e = nlohmann::json::parse(m.data);
                                                 s.text += e.value("text", "");
                                                 ++s.events;
                                                 if (e.contains("finish_reason")) s.last = e;
                                               })
                                         .ok());
                         return true;
                       });
  EXPECT_TRUE(head.ok()) << head.status().ToString();
  if (!head.ok()) return s;
  s.status = head->status;
  s.content_type = std::string(net::MediaTypeOf(head->headers));
  return s;
}

// The text model end to end: dmoe-train learns the King James Version through the swarm (bits per
// byte fall, the progress lines show bpb and tokens/s) and publishes; the router generates from it
// the same text for the same seed whether asked for JSON, an event stream, through `dmoe generate`
// or the dashboard's box in Chromium.
TEST_F(TrainE2eTest, TrainsATextModelAndTheRouterStreamsItsGeneration) {
  ASSERT_TRUE(trainer_.SaveToFile(dir_.Sub("trainer.key")).ok());
  Result<std::string> kjv = data::ReadKjv(RealClock::Instance());
  ASSERT_TRUE(kjv.ok()) << kjv.status().ToString();
  const std::string text = dir_.WriteFile("kjv.txt", kjv->substr(0, 256 << 10));
  const std::string spec = dir_.WriteFile("text.json", kTextSpec);
  Swarm swarm(dir_);
  ASSERT_EQ(swarm.servers().size(), 4u);
  testing::RouterProcess router = StartSwarmRouter(swarm.dht(), dir_.Sub("router"), keys_);
  ASSERT_FALSE(router.endpoint.empty());

  testing::RunResult train = testing::Run(TrainArgs(spec, swarm.dht(),
                                                    {"--data",
                                                     "text:" + text,
                                                     "--seq-len",
                                                     "64",
                                                     "--router",
                                                     router.endpoint,
                                                     "--identity",
                                                     dir_.Sub("trainer.key"),
                                                     "--steps",
                                                     "80",
                                                     "--batch-size",
                                                     "16",
                                                     "--lr",
                                                     "3e-3",
                                                     "--eval-every",
                                                     "40",
                                                     "--eval-bytes",
                                                     "8192",
                                                     "--publish-every",
                                                     "0",
                                                     "--log-every",
                                                     "20"}),
                                          600s);
  ASSERT_EQ(train.exit_code, 0) << train.out << train.err;
  EXPECT_TRUE(std::regex_search(
      train.out, std::regex(R"(step 80/80 loss [0-9.]+ bpb [0-9.]+ train_acc [0-9.]+ samples/s )"
                            R"([0-9.]+ tokens/s [0-9.]+ experts/sample [0-9.]+)")))
      << train.out;
  std::smatch first, done;
  ASSERT_TRUE(std::regex_search(train.out, first, std::regex(R"(eval step 40 bpb ([0-9.]+))")))
      << train.out;
  ASSERT_TRUE(std::regex_search(train.out, done,
                                std::regex(R"(done: steps 80 bpb ([0-9.]+) model_version (\d+))")))
      << train.out;
  std::printf("held-out bpb: %s at step 40, %s at step 80\n", first[1].str().c_str(),
              done[1].str().c_str());
  // A uniform guess is 8 bits per byte; 80 steps of 16 x 64 bytes learn the letters' frequencies
  // and more.
  EXPECT_LT(std::stod(done[1]), 5.0) << train.out;
  const int64_t version = std::stoll(done[2]);

  const std::string url = router.endpoint + "/v1/models/kjv_e2e/generate";
  const nlohmann::json request = {
      {"prompt", "In the beginning"}, {"max_tokens", 24}, {"seed", 3}, {"temperature", 0.8}};
  auto whole = Call("POST", url, "application/json", Bytes(request.dump()));
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole->status, 200) << whole->body_view();
  const nlohmann::json answer = nlohmann::json::parse(whole->body_view());
  const std::string generated = answer["text"];
  EXPECT_EQ(answer["finish_reason"], "length");
  EXPECT_EQ(answer["usage"]["prompt_tokens"], 16);
  EXPECT_EQ(answer["usage"]["completion_tokens"], 24);
  EXPECT_EQ(answer["model_version"], version);
  EXPECT_LE(generated.size(), 24u);

  // The same request as an event stream: one event per token (a character split across bytes
  // waits for its last byte), the same text, and a last event with the usage.
  nlohmann::json streaming = request;
  streaming["stream"] = true;
  Streamed stream = GenerateStream(url, streaming);
  EXPECT_EQ(stream.status, 200);
  EXPECT_EQ(stream.content_type, "text/event-stream");
  EXPECT_EQ(stream.text, generated);
  EXPECT_GE(stream.events, 2);
  EXPECT_EQ(stream.last["finish_reason"], "length");
  EXPECT_EQ(stream.last["usage"]["completion_tokens"], 24);

  // `dmoe generate` prints the same text as it arrives, and how fast it came.
  testing::RunResult cli = testing::Run(
      {DMOE_CLI_BINARY, "generate", "--router", router.endpoint, "--model", "kjv_e2e",
       "--max-tokens", "24", "--seed", "3", "--temperature", "0.8", "In the beginning"},
      120s);
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(cli.out, generated + "\n");
  EXPECT_TRUE(std::regex_search(
      cli.err, std::regex(R"(generated 24 tokens in [0-9.]+ s: [0-9.]+ tokens/s, first token )"
                          R"(after [0-9.]+ s, finish_reason length)")))
      << cli.err;

  // The dashboard's box, started by a link, shows the same text once the stream is done.
  if (access("/usr/bin/chromium", X_OK) != 0)
    FAIL() << "chromium is missing: scripts/setup installs it";
  std::string dom;
  const std::regex shown(
      R"re(<pre id="generate-output" data-finish="length"><span class="prompt">In the beginning</span><span id="generate-text">([^<]*)</span></pre>)re");
  std::smatch box;
  const bool rendered = testing::PollUntil(
      [&] {
        dom = DumpDom(router.endpoint +
                          "/?generate=kjv_e2e&prompt=In%20the%20beginning&max_tokens=24&seed=3&"
                          "temperature=0.8",
                      dir_);
        return std::regex_search(dom, box, shown);
      },
      120s, 500ms);
  ASSERT_TRUE(rendered) << dom.substr(0, 4000);
  std::string escaped;
  for (char c : generated) {
    escaped += c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : std::string(1, c);
  }
  EXPECT_EQ(box[1].str(), escaped);

  // A token model takes prompts, not feature rows: .../infer says where to go.
  auto infer = Call("POST", router.endpoint + "/v1/models/kjv_e2e/infer", "application/json",
                    Bytes("{\"inputs\": [[1]]}"));
  ASSERT_TRUE(infer.ok());
  EXPECT_EQ(infer->status, 400) << infer->body_view();
  EXPECT_EQ(ErrorCode(*infer), "invalid_argument");
}

}  // namespace
}  // namespace dmoe::integration
