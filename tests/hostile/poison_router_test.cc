// The router's publication path against poison (issue 12, part 5): a model with NaN or Inf
// weights, a spec whose network is too large to build, and a version far in the future are each
// refused with invalid_argument, and the model that was published before is still served.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "net/http_client.h"
#include "router/router.h"
#include "tensor/safetensors.h"
#include "tests/testing/in_process_router.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;

constexpr char kSpec[] = R"({"name": "tiny", "input_dim": 4, "layers": [
  {"type": "linear", "out": 3}, {"type": "layer_norm"}]})";

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<Tensor> TinyState(float fill = 0.25f) {
  return {{"layer0.weight", {3, 4}, std::vector<float>(12, fill)},
          {"layer0.bias", {3}, std::vector<float>(3, fill)},
          {"layer1.weight", {3}, std::vector<float>(3, 1.0f)},
          {"layer1.bias", {3}, std::vector<float>(3, 0.0f)}};
}

std::vector<uint8_t> ModelBlob(const std::vector<Tensor>& tensors, const std::string& spec,
                               const std::string& version) {
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<safetensors::TensorRef> refs;
  for (const Tensor& t : tensors) {
    bytes.emplace_back(t.values.size() * sizeof(float));
    std::memcpy(bytes.back().data(), t.values.data(), bytes.back().size());
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    refs.push_back({tensors[i].name, safetensors::DType::kF32, tensors[i].shape, bytes[i]});
  }
  return std::move(safetensors::Encode(refs, {{"spec", spec}, {"version", version}})).value();
}

class PoisonRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    router::RouterOptions o;
    o.db_dir = dir_.Sub("router");
    o.inference_threads = 1;
    auto r = testing::StartInProcessRouter(std::move(o));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    router_ = std::move(r).value();
  }
  void TearDown() override {
    if (router_) router_->Stop();
  }

  net::Response Publish(const std::string& name, std::vector<uint8_t> blob) {
    auto r = net::Fetch("PUT", router_->endpoint() + "/v1/models/" + name,
                        {{"Content-Type", "application/x-safetensors"}}, std::move(blob), 30s,
                        net::RequestOptions{.raw_error_responses = true});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : net::Response{};
  }
  // The version of `name` the router lists; 0 when it lists none.
  int64_t ListedVersion(const std::string& name) {
    auto r = net::Fetch("GET", router_->endpoint() + "/v1/models", {}, {}, 10s);
    if (!r.ok()) return -1;
    nlohmann::json j = nlohmann::json::parse(r->body_view(), nullptr, false);
    for (const auto& m : j["models"]) {
      if (m["name"] == name) return m["version"].get<int64_t>();
    }
    return 0;
  }
  static std::string Code(const net::Response& r) {
    auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"]["code"].get<std::string>() : "<none>";
  }
  static std::string Message(const net::Response& r) {
    auto j = nlohmann::json::parse(r.body_view(), nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"]["message"].get<std::string>() : "";
  }
  static int64_t NowMs() { return RealClock::Instance().NowUnixMs(); }

  testing::TempDir dir_{"dmoe-poison-router"};
  std::unique_ptr<router::Router> router_;
};

TEST_F(PoisonRouterTest, NonFiniteWeightsAreRefusedAndTheLastGoodModelStays) {
  const int64_t good = NowMs();
  ASSERT_EQ(Publish("tiny", ModelBlob(TinyState(), kSpec, std::to_string(good))).status, 200);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<Tensor> state = TinyState();
    state[0].values[11] = bad;  // the last element of layer0.weight
    net::Response r = Publish("tiny", ModelBlob(state, kSpec, std::to_string(good + 1)));
    EXPECT_EQ(r.status, 400) << bad << ": " << r.body_view();
    EXPECT_EQ(Code(r), "invalid_argument");
    EXPECT_NE(Message(r).find("layer0.weight"), std::string::npos) << Message(r);
  }
  EXPECT_EQ(ListedVersion("tiny"), good);
  // The good model still answers inference (no experts: the spec has no moe layer).
  auto infer = net::Fetch("POST", router_->endpoint() + "/v1/models/tiny/infer",
                          {{"Content-Type", "application/json"}},
                          net::Bytes{'{', '"', 'i', 'n', 'p', 'u', 't', 's', '"', ':', '[',
                                     '[', '1', ',', '2', ',', '3', ',', '4', ']', ']', '}'},
                          30s, net::RequestOptions{.raw_error_responses = true});
  ASSERT_TRUE(infer.ok()) << infer.status().ToString();
  EXPECT_EQ(infer->status, 200) << infer->body_view();
}

// The spec is checked before its network is built: a few bytes asking for a trillion parameters,
// or for more than the body holds, are refused at once and the router stays small and responsive.
TEST_F(PoisonRouterTest, OversizedSpecIsRefusedBeforeItIsBuilt) {
  const std::string huge = R"({"name": "tiny", "input_dim": 1000000, "layers": [
    {"type": "linear", "out": 1000000}]})";
  // 784 * 100000 = 78M parameters (under the 256M cap) but the body holds 72 bytes of weights.
  const std::string starved = R"({"name": "tiny", "input_dim": 784, "layers": [
    {"type": "linear", "out": 100000}]})";
  for (const std::string& spec : {huge, starved}) {
    const auto start = std::chrono::steady_clock::now();
    net::Response r = Publish("tiny", ModelBlob(TinyState(), spec, std::to_string(NowMs())));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.status, 400) << r.body_view();
    EXPECT_EQ(Code(r), "invalid_argument");
    EXPECT_NE(Message(r).find("parameters"), std::string::npos) << Message(r);
    // Building 78M parameters would take seconds and 300 MB; the check takes microseconds.
    EXPECT_LT(seconds, 2.0);
  }
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PoisonRouterTest, VersionsMoreThanADayAheadAreRefused) {
  const int64_t now = NowMs();
  const int64_t day = 24 * 3600 * 1000;
  for (const std::string& version :
       {std::to_string(now + day + 60'000), std::to_string(std::numeric_limits<int64_t>::max())}) {
    net::Response r = Publish("tiny", ModelBlob(TinyState(), kSpec, version));
    EXPECT_EQ(r.status, 400) << version << ": " << r.body_view();
    EXPECT_EQ(Code(r), "invalid_argument");
    EXPECT_NE(Message(r).find("a day ahead"), std::string::npos) << Message(r);
  }
  EXPECT_EQ(ListedVersion("tiny"), 0);
  // The model is not locked: an honest trainer's version (unix ms now) still publishes, and
  // so does one an hour ahead (clock skew).
  EXPECT_EQ(Publish("tiny", ModelBlob(TinyState(), kSpec, std::to_string(now))).status, 200);
  EXPECT_EQ(Publish("tiny", ModelBlob(TinyState(), kSpec, std::to_string(now + 3'600'000))).status,
            200);
  EXPECT_EQ(ListedVersion("tiny"), now + 3'600'000);
}

}  // namespace
}  // namespace dmoe::hostile
