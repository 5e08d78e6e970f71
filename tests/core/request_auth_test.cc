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
  RequestVerifier verifier_{{trainer_.public_key()}, clock_};
  std::string body_ = "safetensors bytes";
  std::string body_hash_ = HexEncode(Blake2b256(body_));
  const char* path_ = "/v1/experts/ffn.0.1/backward";
};

TEST_F(RequestAuthTest, SigningStringIsExactlyTheProtocols) {
  EXPECT_EQ(RequestSigningString("POST", "/v1/x", "123", "ab"),
            "dmoe-req-v1\nPOST\n/v1/x\n123\nab");
}

TEST_F(RequestAuthTest, AcceptsASignedRequestOnce) {
  RequestSignature sig = SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs());
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
  RequestSignature sig = SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs());
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

TEST_F(RequestAuthTest, UnlistedKeyIsPermissionDenied) {
  RequestSignature sig = SignRequest(stranger_, "POST", path_, Bytes(body_), clock_.NowUnixMs());
  EXPECT_EQ(verifier_.CheckHead(sig).code(), Code::kPermissionDenied);
  EXPECT_EQ(verifier_.Verify(sig, "POST", path_, body_hash_).code(), Code::kPermissionDenied);
}

TEST_F(RequestAuthTest, MissingOrMalformedHeadersAreUnauthenticated) {
  RequestSignature sig = SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs());
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
  RequestSignature old =
      SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs() - 30'001);
  EXPECT_EQ(verifier_.Verify(old, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
  RequestSignature future =
      SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs() + 30'001);
  EXPECT_EQ(verifier_.Verify(future, "POST", path_, body_hash_).code(), Code::kUnauthenticated);
  RequestSignature edge =
      SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs() - 30'000);
  EXPECT_TRUE(verifier_.Verify(edge, "POST", path_, body_hash_).ok());
}

TEST_F(RequestAuthTest, ReplayStaysRefusedUntilTheTimestampLeavesTheWindow) {
  RequestSignature sig = SignRequest(trainer_, "POST", path_, Bytes(body_), clock_.NowUnixMs());
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
