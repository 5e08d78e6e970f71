#include "core/identity.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/hex.h"

namespace dmoe {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dmoe_identity_XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

TEST(IdentityTest, Blake2b256MatchesKnownVector) {
  // BLAKE2b-256 of the empty string (RFC 7693 parameters, 32-byte digest).
  EXPECT_EQ(HexEncode(Blake2b256(std::string_view(""))),
            "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
  EXPECT_EQ(HexEncode(Blake2b256(std::string_view("abc"))),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
}

TEST(IdentityTest, SeedGivesRfc8032PublicKey) {
  // RFC 8032 section 7.1, test 1.
  std::vector<uint8_t> seed =
      *HexDecode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
  Identity id = Identity::FromSeed(std::span<const uint8_t, 32>(seed.data(), 32));
  EXPECT_EQ(id.public_key_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  EXPECT_EQ(SignatureToHex(id.Sign(std::string_view(""))),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_EQ(id.peer_id(), HexEncode(Blake2b256(id.public_key())));
  EXPECT_EQ(id.peer_id().size(), 64u);
}

TEST(IdentityTest, SignAndVerify) {
  Identity a = Identity::Generate();
  Identity b = Identity::Generate();
  EXPECT_NE(a.peer_id(), b.peer_id());
  Signature sig = a.Sign(std::string_view("dmoe-req-v1\nPOST\n/v1/x\n1\nab"));
  EXPECT_TRUE(
      VerifySignature(a.public_key(), std::string_view("dmoe-req-v1\nPOST\n/v1/x\n1\nab"), sig));
  EXPECT_FALSE(
      VerifySignature(a.public_key(), std::string_view("dmoe-req-v1\nPOST\n/v1/x\n2\nab"), sig));
  EXPECT_FALSE(
      VerifySignature(b.public_key(), std::string_view("dmoe-req-v1\nPOST\n/v1/x\n1\nab"), sig));
  sig[0] ^= 1;
  EXPECT_FALSE(
      VerifySignature(a.public_key(), std::string_view("dmoe-req-v1\nPOST\n/v1/x\n1\nab"), sig));
}

TEST(IdentityTest, HexFormsRoundTripAndRejectBadLengths) {
  Identity a = Identity::Generate();
  EXPECT_EQ(*PublicKeyFromHex(a.public_key_hex()), a.public_key());
  EXPECT_EQ(PublicKeyFromHex("abcd").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(PublicKeyFromHex(std::string(64, 'g')).status().code(), Code::kInvalidArgument);
  Signature sig = a.Sign(std::string_view("m"));
  EXPECT_EQ(*SignatureFromHex(SignatureToHex(sig)), sig);
  EXPECT_EQ(SignatureFromHex(a.public_key_hex()).status().code(), Code::kInvalidArgument);
}

TEST(IdentityTest, CreatesFileWithMode0600AndLoadsTheSameKey) {
  TempDir dir;
  std::string path = dir.File("id.key");
  ::umask(022);
  Result<Identity> created = LoadOrCreateIdentity(path);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line.size(), 64u);
  Result<Identity> again = LoadOrCreateIdentity(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->public_key(), created->public_key());
}

TEST(IdentityTest, RefusesAKeyFileOthersCanRead) {
  TempDir dir;
  std::string path = dir.File("id.key");
  ASSERT_TRUE(Identity::Generate().SaveToFile(path).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  Result<Identity> loaded = LoadOrCreateIdentity(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), Code::kPermissionDenied);
  EXPECT_NE(loaded.status().message().find("chmod 600"), std::string::npos);
  // The refused file is left as it was, not replaced by a new key.
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(LoadIdentity(path).ok());
}

TEST(IdentityTest, RejectsMalformedKeyFiles) {
  TempDir dir;
  const char* bad[] = {"", "abc\n", "zz",
                       "0E5751C026E543B2E8AB2EB06099DAA1D1E5DF47778F7787FAAB45CDF12FE3A8\n"};
  for (const char* text : bad) {
    std::string path = dir.File("bad.key");
    {
      std::ofstream out(path);
      out << text;
    }
    ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
    Result<Identity> loaded = LoadIdentity(path);
    ASSERT_FALSE(loaded.ok()) << "accepted '" << text << "'";
    EXPECT_EQ(loaded.status().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(LoadIdentity(dir.File("missing.key")).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace dmoe
