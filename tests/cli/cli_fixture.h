// A fixture that runs the real `dmoe` binary (its path compiled in as DMOE_CLI_PATH) in a
// temporary directory and captures its stdout, stderr and exit status.
#ifndef DMOE_TESTS_CLI_CLI_FIXTURE_H_
#define DMOE_TESTS_CLI_CLI_FIXTURE_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/testing/process.h"

namespace dmoe::cli {

struct Outcome {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class CliTest : public ::testing::Test {
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

  // Runs the dmoe binary with `args` to completion, capturing stdout and stderr.
  Outcome Dmoe(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {DMOE_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    dmoe::testing::RunResult r = dmoe::testing::Run(argv, std::chrono::seconds(120));
    if (r.timed_out) ADD_FAILURE() << "dmoe " << (args.empty() ? "" : args[0]) << " did not finish";
    return Outcome{r.exit_code, r.signal, r.out, r.err};
  }

  std::string dir_;
};

}  // namespace dmoe::cli

#endif  // DMOE_TESTS_CLI_CLI_FIXTURE_H_
