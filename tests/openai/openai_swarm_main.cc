// openai_swarm NODE TEST_FILE: runs the Node test of the OpenAI-compatible API (TEST_FILE, driven
// by the official `openai` npm package) against a real swarm: a dmoe-dht, four dmoe-server
// processes hosting ffn.[0:4].[0:4] (hidden dim 256) and a dmoe-router on which the swarm variant
// of the shift model (tests/openai/shift_model.h) is published as "shift". Once a completion comes
// back through the swarm it runs `NODE --test TEST_FILE` with DMOE_OPENAI_BASE_URL set to
// http://ROUTER/openai/v1, passes its output through, and exits with its exit code. Every child is
// killed when this program ends (tests/testing/process.h).
//
// It fails, never skips: a missing node, or an `openai` package that scripts/setup did not install
// next to TEST_FILE, is an error naming the fix.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "net/http_client.h"
#include "tests/openai/shift_model.h"
#include "tests/testing/process.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::testing {
namespace {

using namespace std::chrono_literals;

int Fail(const std::string& message) {
  std::cerr << "openai_swarm: " << message << "\n";
  return 1;
}

net::Bytes BytesOf(const std::string& s) { return net::Bytes(s.begin(), s.end()); }

// POST /openai/v1/completions for one token of "a"; true once the swarm answers it with "b".
bool OneTokenThroughTheSwarm(const std::string& endpoint, std::string* last) {
  const std::string body = R"({"model": "shift", "prompt": "a", "max_tokens": 1})";
  Result<net::Response> r = net::Fetch("POST", endpoint + "/openai/v1/completions",
                                       {{"Content-Type", "application/json"}}, BytesOf(body), 30s,
                                       net::RequestOptions{.raw_error_responses = true});
  if (!r.ok()) {
    *last = r.status().ToString();
    return false;
  }
  *last = std::to_string(r->status) + " " + std::string(r->body_view());
  nlohmann::json j = nlohmann::json::parse(r->body_view(), nullptr, false);
  return r->status == 200 && j.is_object() &&
         j.value("choices", nlohmann::json::array()).size() == 1 &&
         j["choices"][0].value("text", "") == "b";
}

int RunNodeTest(const std::string& node, const std::string& test_file) {
  if (access(node.c_str(), X_OK) != 0) {
    return Fail("node is missing (" + node + "): the Node test needs Node 20 with npm");
  }
  const std::filesystem::path package =
      std::filesystem::path(test_file).parent_path() / "node_modules" / "openai" / "package.json";
  if (!std::filesystem::exists(package)) {
    return Fail("the openai npm package is missing (" + package.string() +
                "): scripts/setup installs it");
  }
  TempDir dir("dmoe-openai");
  Result<DhtProcess> dht = StartDht();
  if (!dht.ok()) return Fail("dmoe-dht: " + dht.status().ToString());
  std::vector<std::vector<std::string>> server_flags;
  for (int i = 0; i < 4; ++i) {
    server_flags.push_back({"--experts", "ffn." + std::to_string(i) + ".[0:4]", "--hidden-dim",
                            std::to_string(kShiftDim), "--threads", "1", "--dht", dht->address,
                            "--announce-every", "1", "--announce-ttl", "3"});
  }
  Result<std::vector<ServerProcess>> servers = StartServers(server_flags);
  if (!servers.ok()) return Fail("dmoe-server: " + servers.status().ToString());
  Result<RouterProcess> router =
      StartRouter({"--dht", dht->address, "--db", dir.Sub("router"), "--watch", "ffn.",
                   "--refresh-ms", "500", "--threads", "1"});
  if (!router.ok()) return Fail("dmoe-router: " + router.status().ToString());

  const int64_t version = RealClock::Instance().NowUnixMs();
  Result<net::Response> published = net::Fetch(
      "PUT", router->endpoint + "/v1/models/shift", {{"Content-Type", "application/x-safetensors"}},
      ShiftModel("shift", true, version), 30s, net::RequestOptions{.raw_error_responses = true});
  if (!published.ok() || published->status != 200) {
    return Fail("publishing the shift model: " + (published.ok()
                                                      ? std::string(published->body_view())
                                                      : published.status().ToString()));
  }
  // The servers' announcements reach the router's DHT node within a few seconds: poll (each try
  // is one generation through the swarm) until one token comes back, for at most 60 s.
  std::string last;
  if (!testing::PollUntil([&] { return OneTokenThroughTheSwarm(router->endpoint, &last); }, 60s,
                          200ms)) {
    return Fail("the swarm never answered a completion; last answer: " + last + "\nrouter log:\n" +
                router->process->stderr_text());
  }

  const std::string base_url = router->endpoint + "/openai/v1";
  setenv("DMOE_OPENAI_BASE_URL", base_url.c_str(), 1);
  std::cout << "openai_swarm: router " << base_url << ", running " << test_file << std::endl;
  SpawnOptions options;
  options.working_dir = std::filesystem::path(test_file).parent_path().string();
  RunResult test = RunPassingOutput({node, "--test", test_file}, options, 5min);
  if (test.timed_out) return Fail("node did not finish");
  if (test.exit_code != 0) {
    return Fail("the Node test failed; router log:\n" + router->process->stderr_text());
  }
  return 0;
}

}  // namespace
}  // namespace dmoe::testing

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: openai_swarm NODE TEST_FILE\n";
    return 2;
  }
  return dmoe::testing::RunNodeTest(argv[1], argv[2]);
}
