// openapi_walk PYTHON WALK_SCRIPT: walks docs/openapi.yaml against running programs. It starts a
// dmoe-dht, two dmoe-server processes (ffn.[0:2].[0:4] open to training, ffn.[2:4].[0:4] with
// --trainer-keys) and a dmoe-router (with --trainer-keys), all at --log-level debug so that each
// logs "net: serves METHOD /pattern" for every route it registers (net::HttpServer::routes()). It
// collects those routes from each program's log, writes what the walk needs to a JSON file (the
// programs' endpoints and routes, a trainer identity listed in both key files, and the publication
// body of the swarm "shift" model of tests/openai/shift_model.h), then runs
// `PYTHON WALK_SCRIPT` with DMOE_OPENAPI_WALK naming that file, passes its output through and exits
// with its exit code. Every child is killed when this program ends (tests/testing/process.h).
//
// It fails, never skips: a missing python or a program that does not start is an error naming why.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "tests/openai/shift_model.h"
#include "tests/testing/process.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::testing {
namespace {

using namespace std::chrono_literals;

int Fail(const std::string& message) {
  std::cerr << "openapi_walk: " << message << "\n";
  return 1;
}

// The routes a program logged at debug level: every "net: serves ROUTE" line, in order.
std::vector<std::string> LoggedRoutes(const Process& process) {
  static constexpr std::string_view kServes = "net: serves ";
  std::vector<std::string> routes;
  std::istringstream log(process.stderr_text());
  for (std::string line; std::getline(log, line);) {
    const size_t at = line.find(kServes);
    if (at != std::string::npos) routes.push_back(line.substr(at + kServes.size()));
  }
  return routes;
}

// `keyed`: the program runs with --trainer-keys.
nlohmann::json ProcessEntry(const std::string& name, const std::string& kind, bool keyed,
                            const std::string& url, const Process& process) {
  return {{"name", name},
          {"kind", kind},
          {"keyed", keyed},
          {"url", url},
          {"routes", LoggedRoutes(process)}};
}

int Walk(const std::string& python, const std::string& script) {
  if (access(python.c_str(), X_OK) != 0) {
    return Fail(python + " is missing: the walk runs on Debian's python3 with python3-yaml, " +
                "-requests, -websocket and -nacl (scripts/setup installs them)");
  }
  TempDir dir("dmoe-openapi");
  const Identity trainer = Identity::Generate();
  const std::string identity_file = dir.Sub("trainer.key");
  if (Status s = trainer.SaveToFile(identity_file); !s.ok()) return Fail(s.ToString());
  const std::string keys_file = dir.WriteFile("trainer_keys", trainer.public_key_hex() + "\n");

  Result<DhtProcess> dht = StartDht();
  if (!dht.ok()) return Fail("dmoe-dht: " + dht.status().ToString());
  const std::vector<std::string> common = {"--hidden-dim",
                                           std::to_string(kShiftDim),
                                           "--threads",
                                           "1",
                                           "--dht",
                                           dht->address,
                                           "--announce-every",
                                           "1",
                                           "--announce-ttl",
                                           "3",
                                           "--log-level",
                                           "debug"};
  std::vector<std::string> open_flags = {"--experts", "ffn.[0:2].[0:4]"};
  std::vector<std::string> keyed_flags = {"--experts", "ffn.[2:4].[0:4]", "--trainer-keys",
                                          keys_file};
  open_flags.insert(open_flags.end(), common.begin(), common.end());
  keyed_flags.insert(keyed_flags.end(), common.begin(), common.end());
  Result<std::vector<ServerProcess>> servers = StartServers({open_flags, keyed_flags});
  if (!servers.ok()) return Fail("dmoe-server: " + servers.status().ToString());
  Result<RouterProcess> router = StartRouter(
      {"--dht", dht->address, "--db", dir.Sub("router"), "--watch", "ffn.", "--refresh-ms", "500",
       "--threads", "1", "--trainer-keys", keys_file, "--log-level", "debug"});
  if (!router.ok()) return Fail("dmoe-router: " + router.status().ToString());

  const std::vector<uint8_t> shift =
      ShiftModel("shift", /*with_moe=*/true, RealClock::Instance().NowUnixMs());
  const nlohmann::json config = {
      {"trainer_identity", identity_file},
      {"shift_model", dir.WriteFile("shift.safetensors", std::string(shift.begin(), shift.end()))},
      {"processes",
       {ProcessEntry("dmoe-server (open)", "expert", false, (*servers)[0].endpoint,
                     *(*servers)[0].process),
        ProcessEntry("dmoe-server (--trainer-keys)", "expert", true, (*servers)[1].endpoint,
                     *(*servers)[1].process),
        ProcessEntry("dmoe-router", "router", true, router->endpoint, *router->process)}}};
  const std::string config_file = dir.WriteFile("walk.json", config.dump(2));
  setenv("DMOE_OPENAPI_WALK", config_file.c_str(), 1);
  std::cout << "openapi_walk: servers " << (*servers)[0].endpoint << " " << (*servers)[1].endpoint
            << ", router " << router->endpoint << std::endl;

  RunResult walk = RunPassingOutput({python, script}, SpawnOptions{}, 4min);
  if (walk.timed_out) return Fail("the walk did not finish within 4 minutes");
  if (walk.exit_code != 0) {
    const std::string log = router->process->stderr_text();
    return Fail("the walk failed; the router's log ends:\n" +
                log.substr(log.size() - std::min<size_t>(log.size(), 4000)));
  }
  return 0;
}

}  // namespace
}  // namespace dmoe::testing

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: openapi_walk PYTHON WALK_SCRIPT\n";
    return 2;
  }
  return dmoe::testing::Walk(argv[1], argv[2]);
}
