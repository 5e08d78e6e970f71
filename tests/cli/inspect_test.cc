// `dmoe inspect`, run as a real process: its stdout, stderr and exit status.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor/safetensors.h"
#include "tests/cli/cli_fixture.h"

namespace {

class InspectTest : public dmoe::cli::CliTest {};
using dmoe::cli::Outcome;

std::vector<uint8_t> ValidBlob(const std::map<std::string, std::string>& metadata) {
  static const std::vector<uint8_t> kWeights(2 * 3 * 4, 0);
  static const std::vector<uint8_t> kMask = {1, 0, 1};
  auto blob = dmoe::safetensors::Encode({{"w", dmoe::safetensors::DType::kF32, {2, 3}, kWeights},
                                         {"mask", dmoe::safetensors::DType::kBool, {3}, kMask},
                                         {"empty", dmoe::safetensors::DType::kBF16, {0, 4}, {}}},
                                        metadata);
  EXPECT_TRUE(blob.ok()) << blob.status().ToString();
  return *blob;
}

TEST_F(InspectTest, PrintsTensorsAndMetadataOfAValidFile) {
  const std::string path =
      WriteFile("ok.safetensors", ValidBlob({{"uid", "ffn.3.14"}, {"step", "7"}}));
  const Outcome run = Dmoe({"inspect", path});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err, "");
  const nlohmann::json printed = nlohmann::json::parse(run.out);
  const nlohmann::json expected = {{"tensors",
                                    {{"w", {{"dtype", "F32"}, {"shape", {2, 3}}}},
                                     {"mask", {{"dtype", "BOOL"}, {"shape", {3}}}},
                                     {"empty", {{"dtype", "BF16"}, {"shape", {0, 4}}}}}},
                                   {"metadata", {{"uid", "ffn.3.14"}, {"step", "7"}}}};
  EXPECT_EQ(printed, expected);
  // Tensors are listed in data order, before the metadata.
  EXPECT_LT(run.out.find("\"tensors\""), run.out.find("\"metadata\""));
  EXPECT_LT(run.out.find("\"w\""), run.out.find("\"mask\""));
}

TEST_F(InspectTest, PrintsEmptyMetadataWhenAbsent) {
  const Outcome run = Dmoe({"inspect", WriteFile("bare.safetensors", ValidBlob({}))});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json printed = nlohmann::json::parse(run.out);
  EXPECT_EQ(printed.at("metadata"), nlohmann::json::object());
  EXPECT_EQ(printed.at("tensors").size(), 3u);
}

TEST_F(InspectTest, NamesTheBrokenRuleOfACorruptFile) {
  std::vector<uint8_t> blob = ValidBlob({});
  // Header length 2000000, little-endian.
  blob[0] = 0x80;
  blob[1] = 0x84;
  blob[2] = 0x1e;
  const Outcome run = Dmoe({"inspect", WriteFile("corrupt.safetensors", blob)});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.out, "");
  EXPECT_EQ(run.err, "error: safetensors: header length 2000000 exceeds 1 MiB\n");
}

TEST_F(InspectTest, RefusesABoolByteOfTwo) {
  std::vector<uint8_t> blob = ValidBlob({});
  // The mask follows the 24 bytes of w; its first byte becomes 2.
  blob[blob.size() - 3] = 2;
  const Outcome run = Dmoe({"inspect", WriteFile("bool.safetensors", blob)});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err,
            "error: safetensors: BOOL tensor 'mask' has byte 2 at element 0; BOOL bytes must be 0 "
            "or 1\n");
}

TEST_F(InspectTest, NeverCrashesOnTruncatedOrGarbledFiles) {
  const std::vector<uint8_t> valid = ValidBlob({{"k", "v"}});
  for (size_t length : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{40},
                        valid.size() / 2, valid.size() - 1}) {
    const std::vector<uint8_t> truncated(valid.begin(), valid.begin() + length);
    const Outcome run = Dmoe({"inspect", WriteFile("truncated", truncated)});
    EXPECT_EQ(run.signal, 0) << "length " << length;
    EXPECT_EQ(run.exit_code, 2) << "length " << length;
    EXPECT_EQ(run.err.rfind("error: safetensors: ", 0), 0u) << run.err;
  }
  std::vector<uint8_t> garbled = valid;
  for (size_t i = 8; i < garbled.size(); i += 7) garbled[i] ^= 0x5a;
  const Outcome run = Dmoe({"inspect", WriteFile("garbled", garbled)});
  EXPECT_EQ(run.signal, 0);
  EXPECT_EQ(run.exit_code, 2);
}

TEST_F(InspectTest, MissingFileOrDirectoryIsAnError) {
  Outcome run = Dmoe({"inspect", dir_ + "/missing.safetensors"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.out, "");
  EXPECT_EQ(run.err.rfind("error: cannot open " + dir_ + "/missing.safetensors: ", 0), 0u)
      << run.err;
  run = Dmoe({"inspect", dir_});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err, "error: " + dir_ + " is not a regular file\n");
}

TEST_F(InspectTest, UsageErrorsExitWithTwoAndHelpWithZero) {
  EXPECT_EQ(Dmoe({}).exit_code, 2);
  EXPECT_EQ(Dmoe({"inspect"}).exit_code, 2);
  EXPECT_EQ(Dmoe({"no-such-command"}).exit_code, 2);
  const Outcome help = Dmoe({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("inspect"), std::string::npos);
}

}  // namespace
