#include "core/request_auth.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/hex.h"

namespace dmoe {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class RequestAuthTest : public ::testing::Test {
 protected:
  Identity trainer_ = Identity::Generate();
  Identity stranger_ = Identity::Generate();
  FakeClock clock_{1'800'000'000'000};
  Identity server_ = Identity::Generate();
  Identity other_server_ = Identity::Generate();
  RequestVerifier verifier_{{trainer_.public_key()}, server_.peer_id(), clock_};
  std::string body_ = "safetensors bytes";
  std::string body_hash_ = HexEncode(Blake2b256(body_));
  const char* path_ = "/v1/experts/ffn.0.1/backward";
};

TEST_F(RequestAuthTest, SigningStringIsExactlyTheProtocols) {
  EXPECT_EQ(RequestSigningString("p33r", "POST", "/v1/x", "123", "n0nce", "ab"),
            "dmoe-req-v2\np33r\nPOST\n/v1/x\n123\nn0nce\nab");
}

TEST_F(RequestAuthTest, AcceptsASignedRequestOnce) {
  RequestSignature sig =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  EXPECT_TRUE(verifier_.Verify(sig, "POST", path_, body_hash_).ok());
  Status replay = verifier_.Verify(sig, "POST", path_, body_hash_);
  EXPECT_EQ(replay.code(), Code::kUnauthenticated);
  EXPECT_NE(replay.message().find("replayed"), std::string::npos);
  // The same signature in upper case is the same signature.
  RequestSignature upper = sig;
  for (char& c : upper.signature_hex) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(verifier_.Verify(upper, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
}

TEST_F(RequestAuthTest, RefusesWhatDoesNotMatchTheSignature) {
  RequestSignature sig =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  EXPECT_EQ(verifier_.Verify(sig, "POST", "/v1/experts/ffn.0.2/backward", body_hash_).code(),
            Code::kUnauthenticated);
  EXPECT_EQ(verifier_.Verify(sig, "GET", path_, body_hash_).code(), Code::kUnauthenticated);
  EXPECT_EQ(
      verifier_.Verify(sig, "POST", path_, HexEncode(Blake2b256(std::string("other")))).code(),
      Code::kUnauthenticated);
  RequestSignature moved = sig;
  moved.timestamp_ms = std::to_string(clock_.NowUnixMs() + 1);
  EXPECT_EQ(verifier_.Verify(moved, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
}

TEST_F(RequestAuthTest, EveryRequestGetsAFreshNonce) {
  RequestSignature a = SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), 1);
  RequestSignature b = SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), 1);
  EXPECT_EQ(a.nonce_hex.size(), kNonceHexChars);
  EXPECT_NE(a.nonce_hex, b.nonce_hex);
  EXPECT_NE(a.signature_hex, b.signature_hex);
}

TEST_F(RequestAuthTest, ASignatureForAnotherServerIsRefused) {
  RequestSignature sig = SignRequest(trainer_, other_server_.peer_id(), "POST", path_, Bytes(body_),
                                     clock_.NowUnixMs());
  Status s = verifier_.Verify(sig, "POST", path_, body_hash_);
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_NE(s.message().find(server_.peer_id()), std::string::npos) << s.message();
  // The server it was meant for takes it.
  RequestVerifier other({trainer_.public_key()}, other_server_.peer_id(), clock_);
  EXPECT_TRUE(other.Verify(sig, "POST", path_, body_hash_).ok());
}

TEST_F(RequestAuthTest, TheSameNonceTwiceIsAReplay) {
  RequestSignature first =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  ASSERT_TRUE(verifier_.Verify(first, "POST", path_, body_hash_).ok());
  // A second request (another body) that reuses the nonce, properly signed, is still refused.
  std::string other_body = "other bytes";
  std::string other_hash = HexEncode(Blake2b256(other_body));
  RequestSignature second = first;
  second.signature_hex = SignatureToHex(trainer_.Sign(RequestSigningString(
      server_.peer_id(), "POST", path_, first.timestamp_ms, first.nonce_hex, other_hash)));
  Status s = verifier_.Verify(second, "POST", path_, other_hash);
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_NE(s.message().find("replayed"), std::string::npos);
}

TEST_F(RequestAuthTest, VersionOneIsRefusedNamingVersionTwo) {
  // What a v1 client sends: key, timestamp and a v1 signature, no nonce.
  const std::string ts = std::to_string(clock_.NowUnixMs());
  RequestSignature v1{trainer_.public_key_hex(), ts, "",
                      SignatureToHex(trainer_.Sign("dmoe-req-v1\nPOST\n" + std::string(path_) +
                                                   "\n" + ts + "\n" + body_hash_))};
  Status s = verifier_.Verify(v1, "POST", path_, body_hash_);
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_NE(s.message().find("dmoe-req-v2"), std::string::npos) << s.message();
  EXPECT_EQ(verifier_.CheckHead(v1).code(), Code::kUnauthenticated);
  RequestSignature bad_nonce =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  bad_nonce.nonce_hex = "xyz";
  EXPECT_EQ(verifier_.CheckHead(bad_nonce).code(), Code::kUnauthenticated);
}

TEST(EndpointProofTest, ProofsAreCappedPerSecond) {
  ProofRateLimiter limiter(3);
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += limiter.Allow(5'000);
  EXPECT_EQ(allowed, 3);
  EXPECT_FALSE(limiter.Allow(5'999));
  EXPECT_TRUE(limiter.Allow(6'000));
}

TEST(EndpointProofTest, AProofVerifiesOnlyForItsKeyAndChallenge) {
  Identity server = Identity::Generate();
  Identity stranger = Identity::Generate();
  const std::string challenge = NewChallengeHex();
  ASSERT_TRUE(IsChallengeHex(challenge));
  EXPECT_EQ(ProofSigningString("abc", "AB"), "dmoe-proof-v1\nabc\nab");
  const std::string proof = SignProof(server, challenge);
  EXPECT_TRUE(VerifyProof(server.public_key(), challenge, proof));
  EXPECT_FALSE(VerifyProof(stranger.public_key(), challenge, proof));
  EXPECT_FALSE(VerifyProof(server.public_key(), NewChallengeHex(), proof));
  EXPECT_FALSE(VerifyProof(server.public_key(), challenge, "00"));
  EXPECT_FALSE(IsChallengeHex("00"));
  EXPECT_FALSE(IsChallengeHex(std::string(64, 'g')));
}

TEST_F(RequestAuthTest, UnlistedKeyIsPermissionDenied) {
  RequestSignature sig =
      SignRequest(stranger_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  EXPECT_EQ(verifier_.CheckHead(sig).code(), Code::kPermissionDenied);
  EXPECT_EQ(verifier_.Verify(sig, "POST", path_, body_hash_).code(), Code::kPermissionDenied);
}

TEST_F(RequestAuthTest, MissingOrMalformedHeadersAreUnauthenticated) {
  RequestSignature sig =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  RequestSignature missing = sig;
  missing.signature_hex.clear();
  EXPECT_EQ(verifier_.CheckHead(missing).code(), Code::kUnauthenticated);
  RequestSignature bad_key = sig;
  bad_key.key_hex = "xyz";
  EXPECT_EQ(verifier_.CheckHead(bad_key).code(), Code::kUnauthenticated);
  RequestSignature bad_ts = sig;
  bad_ts.timestamp_ms = "12a";
  EXPECT_EQ(verifier_.CheckHead(bad_ts).code(), Code::kUnauthenticated);
  RequestSignature bad_sig = sig;
  bad_sig.signature_hex = "00";
  EXPECT_EQ(verifier_.Verify(bad_sig, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
}

TEST_F(RequestAuthTest, TimestampMustBeWithinThirtySeconds) {
  RequestSignature old = SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_),
                                     clock_.NowUnixMs() - 30'001);
  EXPECT_EQ(verifier_.Verify(old, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
  RequestSignature future = SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_),
                                        clock_.NowUnixMs() + 30'001);
  EXPECT_EQ(verifier_.Verify(future, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
  RequestSignature edge = SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_),
                                      clock_.NowUnixMs() - 30'000);
  EXPECT_TRUE(verifier_.Verify(edge, "POST", path_, body_hash_).ok());
}

TEST_F(RequestAuthTest, ReplayStaysRefusedUntilTheTimestampLeavesTheWindow) {
  RequestSignature sig =
      SignRequest(trainer_, server_.peer_id(), "POST", path_, Bytes(body_), clock_.NowUnixMs());
  ASSERT_TRUE(verifier_.Verify(sig, "POST", path_, body_hash_).ok());
  clock_.AdvanceMs(29'000);
  EXPECT_EQ(verifier_.Verify(sig, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
  clock_.AdvanceMs(2'000);
  // Forgotten, but now outside the window, so still refused (as too old).
  Status s = verifier_.Verify(sig, "POST", path_, body_hash_);
  EXPECT_EQ(s.code(), Code::kUnauthenticated);
  EXPECT_NE(s.message().find("from the server's clock"), std::string::npos);
}

TEST_F(RequestAuthTest, LoadsKeyFilesAndNamesTheBadLine) {
  char tmpl[] = "/tmp/dmoe_keys_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/keys";
  {
    std::ofstream out(path);
    out << "# trainers\n"
        << trainer_.public_key_hex() << "\n\n"
        << stranger_.public_key_hex() << "\n";
  }
  Result<std::set<PublicKey>> keys = RequestVerifier::LoadKeyFile(path);
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ(keys->size(), 2u);
  {
    std::ofstream out(path, std::ios::app);
    out << "not-a-key\n";
  }
  Result<std::set<PublicKey>> bad = RequestVerifier::LoadKeyFile(path);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("line 5"), std::string::npos);
  EXPECT_EQ(RequestVerifier::LoadKeyFile(dir + "/none").status().code(), Code::kNotFound);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dmoe
