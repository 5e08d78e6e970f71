// Model publication (PROTOCOL section 5, PUT /v1/models/{name}): who may publish (signed by a
// listed trainer key for this router's peer id, dmoe-req-v2) and which versions are taken (each
// newer than the last, at most a day ahead of the router's clock). A refused publication leaves the
// published model as it was.
#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "core/request_auth.h"
#include "net/http_client.h"
#include "tests/router/router_fixture.h"
#include "tests/testing/in_process_router.h"

namespace dmoe::router {
namespace {

constexpr int64_t kDayMs = 24 * 3600 * 1000;

class PublishAuthTest : public RouterTest {
 protected:
  void SetUp() override {
    RouterOptions options;
    options.trainer_keys_path = dir_.WriteFile("trainers", trainer_.public_key_hex() + "\n");
    StartRouter(std::move(options));
  }
  Identity trainer_ = Identity::Generate();
};

// What trainers sign publications for: the router's peer id, proven over a client's challenge
// wherever it stands in the query (it was found only first in it; the expert server anywhere).
TEST_F(PublishAuthTest, HealthProvesThePeerIdOverAChallengeAnywhereInTheQuery) {
  const std::string challenge = NewChallengeHex();
  for (const std::string& query : {"?challenge=" + challenge, "?a=1&challenge=" + challenge}) {
    Result<net::Response> r = net::Fetch("GET", router_->endpoint() + "/v1/health" + query);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->status, 200) << query;
    nlohmann::json j = nlohmann::json::parse(r->body_view());
    EXPECT_EQ(j["peer_id"], router_->peer_id());
    ASSERT_TRUE(j.contains("proof")) << query << ": " << j.dump();
    Result<PublicKey> key = PublicKeyFromHex(j["public_key"].get<std::string>());
    ASSERT_TRUE(key.ok());
    EXPECT_TRUE(VerifyProof(*key, challenge, j["proof"].get<std::string>())) << query;
  }
}

TEST_F(PublishAuthTest, SignedByAListedTrainerIsPublished) {
  const int64_t version = NowMs();
  net::Response r = SignedPublish(trainer_, "tiny", TinyModel(std::to_string(version)));
  EXPECT_EQ(r.status, 200) << r.body_view();
  EXPECT_EQ(ListedVersion("tiny"), version);
}

TEST_F(PublishAuthTest, UnsignedIsRefusedUnauthenticated) {
  net::Response r = Publish("tiny", TinyModel(std::to_string(NowMs())));
  EXPECT_EQ(r.status, 401) << r.body_view();
  EXPECT_EQ(ErrorCodeOf(r), "unauthenticated");
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PublishAuthTest, SignedByAnUnlistedKeyIsRefusedPermissionDenied) {
  net::Response r = SignedPublish(Identity::Generate(), "tiny", TinyModel(std::to_string(NowMs())));
  EXPECT_EQ(r.status, 403) << r.body_view();
  EXPECT_EQ(ErrorCodeOf(r), "permission_denied");
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PublishAuthTest, SignedForAnotherPeerIsRefused) {
  const std::string other_peer = Identity::Generate().peer_id();
  net::Response r = SignedPublish(trainer_, "tiny", TinyModel(std::to_string(NowMs())), other_peer);
  EXPECT_EQ(r.status, 401) << r.body_view();
  EXPECT_EQ(ErrorCodeOf(r), "unauthenticated");
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PublishAuthTest, ABodyOtherThanTheSignedOneIsRefused) {
  const int64_t version = NowMs();
  const std::string path = "/v1/models/tiny";
  RequestSignature sig = SignRequest(trainer_, router_->peer_id(), "PUT", path,
                                     TinyModel(std::to_string(version)), NowMs());
  net::Response r = Publish("tiny", TinyModel(std::to_string(version + 1)), SignatureHeaders(sig));
  EXPECT_EQ(r.status, 401) << r.body_view();
  EXPECT_EQ(ErrorCodeOf(r), "unauthenticated");
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PublishAuthTest, AReplayedPublicationIsRefused) {
  const std::vector<uint8_t> body = TinyModel(std::to_string(NowMs()));
  RequestSignature sig =
      SignRequest(trainer_, router_->peer_id(), "PUT", "/v1/models/tiny", body, NowMs());
  const net::Headers headers = SignatureHeaders(sig);
  ASSERT_EQ(Publish("tiny", body, headers).status, 200);
  net::Response replay = Publish("tiny", body, headers);
  EXPECT_EQ(replay.status, 401) << replay.body_view();
  EXPECT_EQ(ErrorCodeOf(replay), "unauthenticated");
}

TEST_F(PublishAuthTest, ASignatureOutsideTheTimeWindowIsRefused) {
  const std::vector<uint8_t> body = TinyModel(std::to_string(NowMs()));
  RequestSignature sig = SignRequest(trainer_, router_->peer_id(), "PUT", "/v1/models/tiny", body,
                                     NowMs() - 2 * kRequestWindowMs);
  net::Response r = Publish("tiny", body, SignatureHeaders(sig));
  EXPECT_EQ(r.status, 401) << r.body_view();
  EXPECT_EQ(ErrorCodeOf(r), "unauthenticated");
}

TEST(RouterStartTest, RefusesAPublicAddressWithoutTrainerKeysAndRunsWithoutADatabase) {
  testing::TempDir dir("dmoe-router-start");
  RouterOptions open;
  open.listen_host = "0.0.0.0";
  open.db_dir = dir.Sub("router");
  Result<std::unique_ptr<Router>> refused = testing::StartInProcessRouter(std::move(open));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--trainer-keys"), std::string::npos);

  RouterOptions no_db;
  Result<std::unique_ptr<Router>> no_db_router = testing::StartInProcessRouter(std::move(no_db));
  ASSERT_FALSE(no_db_router.ok());
  EXPECT_EQ(no_db_router.status().code(), Code::kInvalidArgument);
}

// Without --trainer-keys on loopback anyone may publish: the version rules alone decide.
class PublishVersionTest : public RouterTest {
 protected:
  void SetUp() override { StartRouter(); }
};

TEST_F(PublishVersionTest, NewerVersionsReplaceTheModel) {
  const int64_t v = NowMs();
  ASSERT_EQ(Publish("tiny", TinyModel(std::to_string(v))).status, 200);
  net::Response newer = Publish("tiny", TinyModel(std::to_string(v + 1)));
  EXPECT_EQ(newer.status, 200) << newer.body_view();
  EXPECT_EQ(ListedVersion("tiny"), v + 1);
}

TEST_F(PublishVersionTest, OlderAndEqualVersionsAreRefusedAndTheModelStays) {
  const int64_t v = NowMs();
  ASSERT_EQ(Publish("tiny", TinyModel(std::to_string(v))).status, 200);
  for (int64_t stale : {v, v - 1, int64_t{1}}) {
    net::Response r = Publish("tiny", TinyModel(std::to_string(stale)));
    EXPECT_EQ(r.status, 400) << stale << ": " << r.body_view();
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument");
  }
  EXPECT_EQ(ListedVersion("tiny"), v);
}

TEST_F(PublishVersionTest, VersionsUpToADayAheadAreTakenBeyondAreRefused) {
  const int64_t now = NowMs();
  net::Response far = Publish("tiny", TinyModel(std::to_string(now + kDayMs + 60'000)));
  EXPECT_EQ(far.status, 400) << far.body_view();
  EXPECT_EQ(ErrorCodeOf(far), "invalid_argument");
  EXPECT_EQ(ListedVersion("tiny"), 0);
  net::Response skewed = Publish("tiny", TinyModel(std::to_string(now + kDayMs - 60'000)));
  EXPECT_EQ(skewed.status, 200) << skewed.body_view();
  EXPECT_EQ(ListedVersion("tiny"), now + kDayMs - 60'000);
}

TEST_F(PublishVersionTest, AVersionThatIsNotAPositiveIntegerIsRefused) {
  for (const char* version : {"0", "-5", "12abc", "", "1.5", "99999999999999999999"}) {
    net::Response r = Publish("tiny", TinyModel(version));
    EXPECT_EQ(r.status, 400) << "'" << version << "': " << r.body_view();
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument");
  }
  EXPECT_EQ(ListedVersion("tiny"), 0);
}

TEST_F(PublishVersionTest, MalformedPublicationsAreRefusedWithTheirCode) {
  const std::string version = std::to_string(NowMs());
  // Not safetensors as declared.
  net::Response media = Publish("tiny", TinyModel(version), {{"Content-Type", "application/json"}});
  EXPECT_EQ(media.status, 415) << media.body_view();
  EXPECT_EQ(ErrorCodeOf(media), "unsupported_media_type");
  // A name outside [A-Za-z0-9_.-].
  net::Response name = Publish("bad$name", TinyModel(version));
  EXPECT_EQ(name.status, 400) << name.body_view();
  // The spec names another model than the path.
  net::Response renamed = Publish("other", TinyModel(version));
  EXPECT_EQ(renamed.status, 400) << renamed.body_view();
  EXPECT_NE(ErrorMessageOf(renamed).find("'tiny'"), std::string::npos) << renamed.body_view();
  // Bytes that are not safetensors.
  net::Response garbage = Publish("tiny", {'n', 'o', 'p', 'e'});
  EXPECT_EQ(garbage.status, 400) << garbage.body_view();
  EXPECT_EQ(ErrorCodeOf(garbage), "invalid_argument");
  // A state dict that is not the spec's network (the norm's bias missing).
  std::vector<testing::F32Tensor> short_state = TinyState();
  short_state.pop_back();
  net::Response mismatch = Publish("tiny", ModelBlob(short_state, kTinySpec, version));
  EXPECT_EQ(mismatch.status, 400) << mismatch.body_view();
  EXPECT_EQ(ErrorCodeOf(mismatch), "invalid_argument");
  EXPECT_EQ(ListedVersion("tiny"), 0);
  EXPECT_EQ(ListedVersion("other"), 0);
  // The same model, well formed, is taken.
  EXPECT_EQ(Publish("tiny", TinyModel(version)).status, 200);
}

}  // namespace
}  // namespace dmoe::router
