// `dmoe export`, `dmoe keygen` and `dmoe pubkey`, run as real processes.
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "core/identity.h"
#include "storage/expert_store.h"
#include "tensor/safetensors.h"
#include "tests/cli/cli_fixture.h"

namespace dmoe::cli {
namespace {

class ExportTest : public CliTest {};
class KeygenTest : public CliTest {};

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i);
  return b;
}

TEST_F(ExportTest, WritesTheNewestWeightsWithoutOptimizerState) {
  const std::string db = dir_ + "/db";
  {
    auto store =
        std::move(storage::ExpertStore::Open(db, {.clock = &RealClock::Instance()})).value();
    for (int64_t step : {3, 5}) {
      std::vector<uint8_t> w = Bytes(16, static_cast<uint8_t>(step)), m = Bytes(16, 99);
      ASSERT_TRUE(
          store
              ->SaveCheckpoint("ffn.0.1",
                               {{"param/linear1.weight", safetensors::DType::kF32, {2, 2}, w},
                                {"optim/linear1.weight/m", safetensors::DType::kF32, {2, 2}, m}},
                               step, {{"type", "ffn"}})
              .ok());
    }
  }
  const std::string out = dir_ + "/w.safetensors";
  Outcome run = Dmoe({"export", "--db", db, "--uid", "ffn.0.1", "--out", out});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("step 5"), std::string::npos) << run.out;
  std::string file = ReadAll(out);
  auto decoded = safetensors::Decode({reinterpret_cast<const uint8_t*>(file.data()), file.size()});
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), 1u);
  EXPECT_EQ(decoded->tensors[0].name, "linear1.weight");
  std::vector<uint8_t> expected = Bytes(16, 5);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), decoded->tensors[0].data.begin()));
  EXPECT_EQ(decoded->metadata.at("step"), "5");
  EXPECT_EQ(decoded->metadata.at("uid"), "ffn.0.1");
  // dmoe inspect reads what export wrote.
  Outcome inspect = Dmoe({"inspect", out});
  EXPECT_EQ(inspect.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(inspect.out)["tensors"]["linear1.weight"]["shape"],
            nlohmann::json({2, 2}));
}

TEST_F(ExportTest, UnknownUidOrMissingDatabaseIsAnError) {
  const std::string db = dir_ + "/db";
  {
    auto store =
        std::move(storage::ExpertStore::Open(db, {.clock = &RealClock::Instance()})).value();
  }
  Outcome unknown = Dmoe({"export", "--db", db, "--uid", "ffn.9", "--out", dir_ + "/x"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_EQ(unknown.err.rfind("error: ", 0), 0u) << unknown.err;
  Outcome missing =
      Dmoe({"export", "--db", dir_ + "/none", "--uid", "ffn.9", "--out", dir_ + "/x"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/none"));
}

TEST_F(KeygenTest, CreatesAPrivateIdentityAndPrintsItsKeys) {
  const std::string path = dir_ + "/id.key";
  Outcome run = Dmoe({"keygen", "--out", path});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Identity id = std::move(LoadIdentity(path)).value();
  EXPECT_EQ(run.out, "public_key=" + id.public_key_hex() + "\npeer_id=" + id.peer_id() + "\n");
  Outcome pub = Dmoe({"pubkey", "--identity", path});
  EXPECT_EQ(pub.out, id.public_key_hex() + "\n");
  // An existing identity is never silently replaced.
  Outcome again = Dmoe({"keygen", "--out", path});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_EQ(std::move(LoadIdentity(path)).value().public_key(), id.public_key());
}

}  // namespace
}  // namespace dmoe::cli
