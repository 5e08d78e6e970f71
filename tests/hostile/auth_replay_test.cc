// Requests bound to their target (issue 12 part 1), against real dmoe-server processes: a signed
// request (HTTP backward or WebSocket upgrade) captured by one server and replayed to another is
// refused, a replay to the server it was meant for is refused, and version-1 signatures are
// refused naming version 2. Nothing refused changes an expert.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/hex.h"
#include "core/identity.h"
#include "core/request_auth.h"
#include "gating/expert_caller.h"
#include "tensor/safetensors.h"
#include "tests/hostile/rogue_auth.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;
using integration::EncodeF32;
using integration::ErrorCode;
using integration::Pattern;
using integration::ServerClient;
using integration::ServerProcess;
using integration::WsSession;

constexpr char kUid[] = "ffn.5";
constexpr char kBackwardPath[] = "/v1/experts/ffn.5/backward";
constexpr int kDim = 16;

net::Headers HeadersOf(const RequestSignature& sig) {
  net::Headers h{{kKeyHeader, sig.key_hex},
                 {kTimestampHeader, sig.timestamp_ms},
                 {kSignatureHeader, sig.signature_hex}};
  if (!sig.nonce_hex.empty()) h.Set(kNonceHeader, sig.nonce_hex);
  return h;
}

// The auth headers of a captured request head.
net::Headers AuthHeadersOf(const net::RequestHead& head) {
  net::Headers h;
  for (const char* name : {kKeyHeader, kTimestampHeader, kNonceHeader, kSignatureHeader}) {
    if (auto v = head.headers.Get(name)) h.Set(name, std::string(*v));
  }
  return h;
}

class AuthReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string keys = dir_.WriteFile("trainers.txt", trainer_.public_key_hex() + "\n");
    for (ServerProcess* server : {&a_, &b_}) {
      std::vector<std::string> args = integration::BaseServerArgs(kUid, kDim);
      args.insert(args.end(), {"--trainer-keys", keys});
      Result<ServerProcess> started = integration::StartServer(args);
      ASSERT_TRUE(started.ok()) << started.status().ToString();
      *server = std::move(started).value();
    }
    a_client_.emplace(a_.endpoint);
    b_client_.emplace(b_.endpoint);
    a_peer_ = PeerIdAt(a_.endpoint);
    b_peer_ = PeerIdAt(b_.endpoint);
    ASSERT_NE(a_peer_, b_peer_);
  }

  static std::string PeerIdAt(const std::string& endpoint) {
    Result<net::Response> r = net::Fetch("GET", endpoint + "/v1/health");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    return nlohmann::json::parse(r->body_view())["peer_id"].get<std::string>();
  }

  // HTTP status of a backward with `headers`; -1 without an answer.
  static int Backward(ServerClient& client, const std::vector<uint8_t>& body,
                      const net::Headers& headers, std::string* error = nullptr) {
    Result<net::Response> r = client.Backward(kUid, body, headers);
    if (!r.ok()) return -1;
    if (error) *error = std::string(r->body_view());
    return r->status;
  }

  std::vector<uint8_t> Body(uint64_t seed) {
    return EncodeF32({Pattern("x", {2, kDim}, seed), Pattern("grad_y", {2, kDim}, seed + 1, 0.1f)});
  }

  testing::TempDir dir_{"dmoe-hostile-auth"};
  Identity trainer_ = Identity::Generate();
  ServerProcess a_, b_;
  std::optional<ServerClient> a_client_, b_client_;
  std::string a_peer_, b_peer_;
};

TEST_F(AuthReplayTest, ABackwardSignedForOneServerIsRefusedByAnotherAndOnReplay) {
  const std::vector<uint8_t> body = Body(1);
  const RequestSignature for_a = SignRequest(trainer_, a_peer_, "POST", kBackwardPath, body,
                                             RealClock::Instance().NowUnixMs());
  ASSERT_EQ(Backward(*a_client_, body, HeadersOf(for_a)), 200);
  ASSERT_EQ(a_client_->ExpertStep(kUid), 1);

  // What A saw, replayed: to B (another server the trainer trusts), to A again, many times.
  int accepted = 0, refused_401 = 0;
  for (int i = 0; i < 10; ++i) {
    for (ServerClient* target : {&*b_client_, &*a_client_}) {
      std::string error;
      const int status = Backward(*target, body, HeadersOf(for_a), &error);
      accepted += status == 200;
      refused_401 += status == 401;
    }
  }
  EXPECT_EQ(accepted, 0);
  EXPECT_EQ(refused_401, 20);
  // A fresh request for A, never sent to A, is still not B's.
  const RequestSignature fresh_for_a = SignRequest(trainer_, a_peer_, "POST", kBackwardPath, body,
                                                   RealClock::Instance().NowUnixMs());
  std::string error;
  EXPECT_EQ(Backward(*b_client_, body, HeadersOf(fresh_for_a), &error), 401) << error;
  EXPECT_NE(error.find("unauthenticated"), std::string::npos) << error;
  EXPECT_EQ(b_client_->ExpertStep(kUid), 0) << "a request signed for A changed B's expert";
  EXPECT_EQ(a_client_->ExpertStep(kUid), 1) << "a replay changed A's expert";

  // Signed for B, B takes it.
  const RequestSignature for_b = SignRequest(trainer_, b_peer_, "POST", kBackwardPath, body,
                                             RealClock::Instance().NowUnixMs());
  EXPECT_EQ(Backward(*b_client_, body, HeadersOf(for_b)), 200);
  EXPECT_EQ(b_client_->ExpertStep(kUid), 1);
}

TEST_F(AuthReplayTest, VersionOneSignaturesAreRefusedNamingVersionTwo) {
  const std::vector<uint8_t> body = Body(2);
  const std::string ts = std::to_string(RealClock::Instance().NowUnixMs());
  const std::string v1 = "dmoe-req-v1\nPOST\n" + std::string(kBackwardPath) + "\n" + ts + "\n" +
                         HexEncode(Blake2b256(body));
  RequestSignature sig{trainer_.public_key_hex(), ts, "", SignatureToHex(trainer_.Sign(v1))};
  std::string error;
  EXPECT_EQ(Backward(*a_client_, body, HeadersOf(sig), &error), 401);
  EXPECT_NE(error.find("dmoe-req-v2"), std::string::npos) << error;
  EXPECT_EQ(a_client_->ExpertStep(kUid), 0);
  // The WebSocket upgrade too.
  Result<std::unique_ptr<WsSession>> ws = WsSession::Open(
      a_.endpoint,
      HeadersOf({trainer_.public_key_hex(), ts, "",
                 SignatureToHex(trainer_.Sign("dmoe-req-v1\nGET\n/v1/ws\n" + ts + "\n" +
                                              HexEncode(Blake2b256(std::string()))))}));
  ASSERT_FALSE(ws.ok());
  EXPECT_EQ(ws.status().code(), Code::kUnauthenticated) << ws.status().ToString();
}

// The trainer's own caller (gating::ExpertCaller) opens a WebSocket to a hostile endpoint that
// proved its own key: the upgrade it records is signed for that endpoint's key only, so neither
// honest server accepts it. An upgrade signed for A is refused by B, and by A once used.
TEST_F(AuthReplayTest, ACapturedWebSocketUpgradeOpensNoOtherServer) {
  Result<std::unique_ptr<RogueEndpoint>> rogue =
      RogueEndpoint::Start(RogueEndpoint::ProofMode::kOwnKey);
  ASSERT_TRUE(rogue.ok()) << rogue.status().ToString();
  gating::CallerOptions options;
  options.identity = trainer_;
  gating::ExpertCaller caller(RealClock::Instance(), options);
  std::promise<gating::ProofResult> proven;
  caller.Prove((*rogue)->endpoint(), (*rogue)->identity().public_key(),
               RealClock::Instance().Now() + 10s,
               [&](gating::ProofResult r) { proven.set_value(r); });
  ASSERT_EQ(proven.get_future().get(), gating::ProofResult::kProven);
  const std::string id = caller.NextId();
  caller.Send(
      (*rogue)->endpoint(), id,
      EncodeF32({Pattern("x", {1, kDim}, 3)}, {{"id", id}, {"op", "forward"}, {"uid", kUid}}),
      RealClock::Instance().Now() + 10s, [](gating::CallOutcome) {});
  ASSERT_TRUE(testing::PollUntil([&] { return (*rogue)->messages() >= 1; }, 10s));
  ASSERT_EQ((*rogue)->upgrades().size(), 1u);
  const net::Headers captured = AuthHeadersOf((*rogue)->upgrades()[0]);
  ASSERT_TRUE(captured.Has(kNonceHeader)) << "the caller signs dmoe-req-v2";
  caller.Forget((*rogue)->endpoint(), id);

  int accepted = 0;
  for (const std::string& endpoint : {a_.endpoint, b_.endpoint}) {
    Result<std::unique_ptr<WsSession>> ws = WsSession::Open(endpoint, captured);
    accepted += ws.ok();
    if (!ws.ok()) {
      EXPECT_EQ(ws.status().code(), Code::kUnauthenticated) << ws.status().ToString();
    }
  }
  EXPECT_EQ(accepted, 0);

  // An upgrade signed for A: A takes it once; B never; A not twice.
  const net::Headers for_a = HeadersOf(
      SignRequest(trainer_, a_peer_, "GET", "/v1/ws", {}, RealClock::Instance().NowUnixMs()));
  Result<std::unique_ptr<WsSession>> at_b = WsSession::Open(b_.endpoint, for_a);
  ASSERT_FALSE(at_b.ok());
  EXPECT_EQ(at_b.status().code(), Code::kUnauthenticated);
  Result<std::unique_ptr<WsSession>> at_a = WsSession::Open(a_.endpoint, for_a);
  ASSERT_TRUE(at_a.ok()) << at_a.status().ToString();
  Result<std::unique_ptr<WsSession>> again = WsSession::Open(a_.endpoint, for_a);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kUnauthenticated);
  EXPECT_EQ(a_client_->ExpertStep(kUid), 0);
  EXPECT_EQ(b_client_->ExpertStep(kUid), 0);
}

}  // namespace
}  // namespace dmoe::hostile
