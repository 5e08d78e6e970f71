// Who may train, end to end across processes (PROTOCOL section 4): a key made by `dmoe keygen`,
// listed through `dmoe pubkey` in the --trainer-keys file of a real dmoe-server, signs backward
// requests; everything else that would change the weights is refused, and forward stays open.
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/request_auth.h"
#include "net/http_client.h"
#include "tensor/safetensors.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;

constexpr char kAuthUid[] = "ffn.5";
constexpr char kBackwardPath[] = "/v1/experts/ffn.5/backward";
constexpr int kAuthDim = 16;

net::Headers SignedFor(const std::string& server_peer_id, const Identity& identity,
                       const std::string& method, const std::string& path,
                       const std::vector<uint8_t>& body, int64_t now_ms) {
  RequestSignature sig = SignRequest(identity, server_peer_id, method, path, body, now_ms);
  return {{kKeyHeader, sig.key_hex},
          {kTimestampHeader, sig.timestamp_ms},
          {kNonceHeader, sig.nonce_hex},
          {kSignatureHeader, sig.signature_hex}};
}

int64_t NowMs() { return RealClock::Instance().NowUnixMs(); }

// Creates an identity file with `dmoe keygen` and checks what it prints.
Result<Identity> Keygen(const std::string& path) {
  testing::RunResult made = testing::Run({DMOE_CLI_BINARY, "keygen", "--out", path});
  if (made.exit_code != 0) return UnavailableError("dmoe keygen failed: " + made.err);
  Result<Identity> id = LoadIdentity(path);
  if (id.ok() && made.out.find("public_key=" + id->public_key_hex()) == std::string::npos) {
    return InternalError("dmoe keygen printed '" + made.out + "', not the key it saved");
  }
  return id;
}

class ServerAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<Identity> trainer = Keygen(dir_.Sub("trainer.key"));
    ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();
    trainer_.emplace(*trainer);
    Result<Identity> stranger = Keygen(dir_.Sub("stranger.key"));
    ASSERT_TRUE(stranger.ok()) << stranger.status().ToString();
    stranger_.emplace(*stranger);

    // The key file as an operator writes it: `dmoe pubkey` output, with a comment.
    testing::RunResult pub =
        testing::Run({DMOE_CLI_BINARY, "pubkey", "--identity", dir_.Sub("trainer.key")});
    ASSERT_EQ(pub.exit_code, 0) << pub.err;
    ASSERT_EQ(pub.out, trainer_->public_key_hex() + "\n");
    const std::string keys = dir_.WriteFile("trainers.txt", "# who may train\n" + pub.out);

    // A public address is allowed because trainer keys are given.
    std::vector<std::string> args = BaseServerArgs(kAuthUid, kAuthDim);
    args[1] = "0.0.0.0:0";
    args.insert(args.end(), {"--trainer-keys", keys});
    Result<ServerProcess> server = StartServer(args);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    client_.emplace(server_.endpoint);
    Result<net::Response> health = net::Fetch("GET", server_.endpoint + "/v1/health");
    ASSERT_TRUE(health.ok()) << health.status().ToString();
    peer_id_ = nlohmann::json::parse(health->body_view())["peer_id"].get<std::string>();
  }

  // Signed for this server (dmoe-req-v2 names its peer id).
  net::Headers Signed(const Identity& identity, const std::string& method, const std::string& path,
                      const std::vector<uint8_t>& body, int64_t now_ms) {
    return SignedFor(peer_id_, identity, method, path, body, now_ms);
  }

  std::vector<uint8_t> BackwardBody(uint64_t seed) {
    return EncodeF32(
        {Pattern("x", {2, kAuthDim}, seed), Pattern("grad_y", {2, kAuthDim}, seed + 1, 0.1f)});
  }

  // Sends a backward and returns (HTTP status, error code); -1 when no answer came.
  std::pair<int, std::string> Backward(const std::vector<uint8_t>& body, net::Headers headers) {
    Result<net::Response> r = client_->Backward(kAuthUid, body, std::move(headers));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {-1, ""};
    return {r->status, ErrorCode(*r)};
  }

  testing::TempDir dir_{"dmoe-server-auth"};
  std::optional<Identity> trainer_, stranger_;
  ServerProcess server_;
  std::string peer_id_;
  std::optional<ServerClient> client_;
};

TEST_F(ServerAuthTest, OnlyListedKeysTrainAndForwardStaysOpen) {
  using Outcome = std::pair<int, std::string>;
  // Forward needs no signature.
  Result<net::Response> fwd =
      client_->Forward(kAuthUid, EncodeF32({Pattern("x", {2, kAuthDim}, 9)}));
  ASSERT_TRUE(fwd.ok()) << fwd.status().ToString();
  EXPECT_EQ(fwd->status, 200) << fwd->body_view();

  const std::vector<uint8_t> body = BackwardBody(1);
  EXPECT_EQ(Backward(body, {}), Outcome(401, "unauthenticated"));
  EXPECT_EQ(client_->ExpertStep(kAuthUid), 0) << "a refused backward changed the expert";

  const net::Headers good = Signed(*trainer_, "POST", kBackwardPath, body, NowMs());
  EXPECT_EQ(Backward(body, good), Outcome(200, ""));
  EXPECT_EQ(client_->ExpertStep(kAuthUid), 1);

  // The same signed request again is a replay.
  EXPECT_EQ(Backward(body, good), Outcome(401, "unauthenticated"));
  // A valid signature by a key not in the file.
  EXPECT_EQ(Backward(body, Signed(*stranger_, "POST", kBackwardPath, body, NowMs())),
            Outcome(403, "permission_denied"));
  // The trainer's signature over another body, and one signed for another path.
  const std::vector<uint8_t> other = BackwardBody(2);
  EXPECT_EQ(Backward(other, Signed(*trainer_, "POST", kBackwardPath, body, NowMs())),
            Outcome(401, "unauthenticated"));
  EXPECT_EQ(Backward(body, Signed(*trainer_, "POST", "/v1/experts/ffn.6/backward", body, NowMs())),
            Outcome(401, "unauthenticated"));
  // A timestamp outside the 30 s window.
  EXPECT_EQ(Backward(body, Signed(*trainer_, "POST", kBackwardPath, body, NowMs() - 60'000)),
            Outcome(401, "unauthenticated"));
  EXPECT_EQ(client_->ExpertStep(kAuthUid), 1) << "a refused backward changed the expert";

  // A fresh signature over the same body is a new request, not a replay.
  EXPECT_EQ(Backward(body, Signed(*trainer_, "POST", kBackwardPath, body, NowMs() + 1)),
            Outcome(200, ""));
  EXPECT_EQ(client_->ExpertStep(kAuthUid), 2);
}

// Decodes a WebSocket answer: (error_code or "", step or -1).
std::pair<std::string, int64_t> WsOutcome(const Result<std::vector<uint8_t>>& answer) {
  if (!answer.ok()) return {"no answer: " + answer.status().ToString(), -1};
  Result<safetensors::Decoded> d = safetensors::Decode(*answer);
  if (!d.ok()) return {"undecodable: " + d.status().ToString(), -1};
  auto code = d->metadata.find("error_code");
  if (code != d->metadata.end()) return {code->second, -1};
  auto step = d->metadata.find("step");
  return {"", step == d->metadata.end() ? -1 : std::stoll(step->second)};
}

TEST_F(ServerAuthTest, WebSocketTrainsOnlyThroughASignedUpgrade) {
  using Outcome = std::pair<std::string, int64_t>;
  auto request = [&](const std::string& op, uint64_t seed) {
    std::vector<F32Tensor> tensors = {Pattern("x", {2, kAuthDim}, seed)};
    if (op == "backward") tensors.push_back(Pattern("grad_y", {2, kAuthDim}, seed + 1, 0.1f));
    return EncodeF32(tensors, {{"id", op + std::to_string(seed)}, {"op", op}, {"uid", kAuthUid}});
  };

  // Unsigned upgrade: forward works, backward is refused on the connection, which stays open.
  Result<std::unique_ptr<WsSession>> open = WsSession::Open(server_.endpoint);
  ASSERT_TRUE(open.ok()) << open.status().ToString();
  EXPECT_EQ(WsOutcome((*open)->Call(request("forward", 1))), Outcome("", 0));
  EXPECT_EQ(WsOutcome((*open)->Call(request("backward", 2))), Outcome("unauthenticated", -1));
  EXPECT_EQ(WsOutcome((*open)->Call(request("forward", 3))), Outcome("", 0));

  // An upgrade signed by a key that is not listed is refused outright.
  Result<std::unique_ptr<WsSession>> stranger =
      WsSession::Open(server_.endpoint, Signed(*stranger_, "GET", "/v1/ws", {}, NowMs()));
  ASSERT_FALSE(stranger.ok());
  EXPECT_EQ(stranger.status().code(), Code::kPermissionDenied) << stranger.status().ToString();

  // The trainer's signed upgrade may train.
  Result<std::unique_ptr<WsSession>> trainer =
      WsSession::Open(server_.endpoint, Signed(*trainer_, "GET", "/v1/ws", {}, NowMs()));
  ASSERT_TRUE(trainer.ok()) << trainer.status().ToString();
  EXPECT_EQ(WsOutcome((*trainer)->Call(request("backward", 4))), Outcome("", 1));
  EXPECT_EQ(client_->ExpertStep(kAuthUid), 1);
}

}  // namespace
}  // namespace dmoe::integration
