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

extern char** environ;

namespace {

struct Outcome {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class InspectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "dmoe_cli_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string WriteFile(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // Runs the dmoe binary with `args`, capturing stdout and stderr in files.
  Outcome Dmoe(const std::vector<std::string>& args) {
    const std::string out_path = dir_ + "/stdout";
    const std::string err_path = dir_ + "/stderr";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    std::vector<std::string> argv_strings = {DMOE_CLI_PATH};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    Outcome run;
    const int spawned = posix_spawn(&pid, DMOE_CLI_PATH, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      ADD_FAILURE() << "cannot run " << DMOE_CLI_PATH;
      return run;
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) run.signal = WTERMSIG(status);
    run.out = ReadAll(out_path);
    run.err = ReadAll(err_path);
    return run;
  }

  std::string dir_;
};

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
