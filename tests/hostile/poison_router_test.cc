// The router's publication path against poison (issue 12, part 5): a model with NaN or Inf
// weights, a spec whose network is too large to build, and a version far in the future are each
// refused with invalid_argument, and the model that was published before is still served.
#include <gtest/gtest.h>

#include <chrono>
#include <limits>

#include "net/http_client.h"
#include "tests/router/router_fixture.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;

using router::ErrorCodeOf;
using router::ErrorMessageOf;
using router::ModelBlob;
using router::NowMs;
using router::TinyState;
constexpr const char* kSpec = router::kTinySpec;

// An in-process router open to publication on loopback (tests/router/router_fixture.h).
class PoisonRouterTest : public router::RouterTest {
 protected:
  void SetUp() override { StartRouter(); }
};

TEST_F(PoisonRouterTest, NonFiniteWeightsAreRefusedAndTheLastGoodModelStays) {
  const int64_t good = NowMs();
  ASSERT_EQ(Publish("tiny", ModelBlob(TinyState(), kSpec, std::to_string(good))).status, 200);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<testing::F32Tensor> state = TinyState();
    state[0].values[11] = bad;  // the last element of layer0.weight
    net::Response r = Publish("tiny", ModelBlob(state, kSpec, std::to_string(good + 1)));
    EXPECT_EQ(r.status, 400) << bad << ": " << r.body_view();
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument");
    EXPECT_NE(ErrorMessageOf(r).find("layer0.weight"), std::string::npos) << ErrorMessageOf(r);
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
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument");
    EXPECT_NE(ErrorMessageOf(r).find("parameters"), std::string::npos) << ErrorMessageOf(r);
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
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument");
    EXPECT_NE(ErrorMessageOf(r).find("a day ahead"), std::string::npos) << ErrorMessageOf(r);
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
