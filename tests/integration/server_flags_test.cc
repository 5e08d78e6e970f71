// dmoe-server as an operator meets it: refusals at start (open training on a public address, bad
// --experts) exit non-zero with a message that says what to do, and SIGTERM stops it cleanly.
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/integration/server_test_util.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;

testing::RunResult RunServer(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {DMOE_SERVER_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::Run(argv, 60s);
}

TEST(ServerFlagsTest, RefusesOpenTrainingOnAPublicAddress) {
  testing::RunResult r = RunServer(
      {"--listen", "0.0.0.0:0", "--experts", "ffn.0", "--hidden-dim", "16", "--threads", "1"});
  EXPECT_FALSE(r.timed_out) << "the server started instead of refusing";
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("dmoe-server: invalid_argument: refusing to serve training on 0.0.0.0 "
                       "without --trainer-keys"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--open-training"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "") << "it must not claim to be listening";
}

TEST(ServerFlagsTest, OpenTrainingFlagAllowsThePublicAddress) {
  Result<ServerProcess> server =
      StartServer({"--listen", "0.0.0.0:0", "--experts", "ffn.0", "--hidden-dim", "16", "--threads",
                   "1", "--open-training"});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  // 0.0.0.0 is announced as loopback unless --public-host says otherwise.
  EXPECT_EQ(server->endpoint.rfind("http://127.0.0.1:", 0), 0u) << server->endpoint;
  ServerClient client(server->endpoint);
  Result<net::Response> health = client.Get("/v1/health");
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ(health->status, 200);
  EXPECT_NE(health->body_view().find("\"status\":\"ok\""), std::string::npos)
      << health->body_view();
  EXPECT_NE(health->body_view().find("\"experts\":1"), std::string::npos) << health->body_view();
  // Training is open: an unsigned backward is accepted.
  std::vector<uint8_t> body =
      EncodeF32({Pattern("x", {1, 16}, 1), Pattern("grad_y", {1, 16}, 2, 0.1f)});
  Result<net::Response> backward = client.Backward("ffn.0", body);
  ASSERT_TRUE(backward.ok()) << backward.status().ToString();
  EXPECT_EQ(backward->status, 200) << backward->body_view();
}

TEST(ServerFlagsTest, PublicEndpointFlagsAreCheckedBeforeStarting) {
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--public-endpoint", "127.0.0.1:9000", "--public-host", "10.0.0.1"},
       "dmoe-server: invalid_argument: --public-endpoint and --public-host are both given"},
      {{"--public-endpoint", "127.0.0.1"},
       "dmoe-server: invalid_argument: --public-endpoint: address '127.0.0.1': missing port"},
      {{"--public-endpoint", "::1:9000"},
       "dmoe-server: invalid_argument: --public-endpoint: address '::1:9000': an IPv6 address "
       "must be in brackets"},
      {{"--public-endpoint", "[::1]:0"},
       "--public-endpoint: address '[::1]:0': port must be "
       "1..65535"},
      {{"--dht-public-endpoint", "http://127.0.0.1:7000"},
       "dmoe-server: invalid_argument: --dht-public-endpoint: address 'http://127.0.0.1:7000': no "
       "scheme"},
      {{"--listen", "127.0.0.1:70000"}, "--listen: address '127.0.0.1:70000': port must be"},
      // Clients reach the announced address: it is as open as a listen address.
      {{"--public-endpoint", "203.0.113.5:8000"},
       "dmoe-server: invalid_argument: refusing to serve training on 203.0.113.5 without "
       "--trainer-keys"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--experts", "ffn.0", "--hidden-dim", "16", "--threads", "1"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    SCOPED_TRACE(c.flags.front() + " " + c.flags[1]);
    testing::RunResult r = RunServer(args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
}

TEST(ServerFlagsTest, BadExpertsExitWithTheReason) {
  struct Case {
    std::string experts;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"ffn.[4:2]",
       "dmoe-server: invalid_argument: grid pattern 'ffn.[4:2]': range '[4:2]' is "
       "empty"},
      {"ffn.[0:4", "dmoe-server: invalid_argument: grid pattern 'ffn.[0:4'"},
      {"ffn.01", "dmoe-server: invalid_argument: expert uid 'ffn.01'"},
      {"9ffn.1", "dmoe-server: invalid_argument: expert uid '9ffn.1'"},
      {",", "dmoe-server: invalid_argument: --experts names no expert"},
      {"ffn.1,ffn.1", "dmoe-server: invalid_argument: expert ffn.1 is listed twice"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("--experts " + c.experts);
    testing::RunResult r = RunServer({"--experts", c.experts, "--hidden-dim", "16"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  // A flag CLI11 refuses (missing value) is a usage error, also non-zero.
  testing::RunResult r = RunServer({"--experts"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--experts"), std::string::npos) << r.err;
  // A listen address without a port.
  r = RunServer({"--experts", "ffn.0", "--listen", "127.0.0.1"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--listen: address '127.0.0.1': missing port (expected HOST:PORT"),
            std::string::npos)
      << r.err;
}

TEST(ServerFlagsTest, SigtermExitsZeroAndLogsStopped) {
  Result<ServerProcess> server = StartServer(BaseServerArgs("ffn.0", 16));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ServerClient client(server->endpoint);
  Result<net::Response> health = client.Get("/v1/health");
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  ASSERT_EQ(health->status, 200);
  // ps, top and pkill see the binary's name, also after the OpenMP wait-policy re-exec.
  std::ifstream comm("/proc/" + std::to_string(server->process->pid()) + "/comm");
  std::string name;
  std::getline(comm, name);
  EXPECT_EQ(name, "dmoe-server");

  const int status = server->process->Stop(SIGTERM, 30s);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "; stderr:\n"
                                 << server->process->stderr_text();
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string log = server->process->stderr_text();
  EXPECT_NE(log.find("signal 15: finishing requests"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped"), std::string::npos) << log;
  // Nothing listens any more.
  Result<net::Response> after = client.Get("/v1/health");
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), Code::kUnavailable) << after.status().ToString();
}

}  // namespace
}  // namespace dmoe::integration
