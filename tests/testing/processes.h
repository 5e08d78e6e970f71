// The dmoe programs as child processes, for multi-process tests and benchmarks: start dmoe-dht,
// dmoe-server and dmoe-router, wait for the line each prints once it serves, and return the
// endpoints read off those lines. Built on Process (tests/testing/process.h), so every child is
// killed and reaped when its Process goes, and every wait has a deadline.
//
//   Result<testing::DhtProcess> dht = testing::StartDht();
//   ASSERT_TRUE(dht.ok()) << dht.status().ToString();
//   Result<testing::ServerProcess> server =
//       testing::StartServer({"--experts", "ffn.[0:4]", "--dht", dht->address});
//   // server->endpoint is "http://127.0.0.1:PORT"
//
// The lines read are the programs' own start-up output, which stays as it is:
//   dmoe-dht     "listening on udp://HOST:PORT peer_id=HEX"
//   dmoe-server  "listening on http://HOST:PORT" (then "announcing as ..." when it differs)
//   dmoe-router  "peer_id HEX", then "listening on http://HOST:PORT"
//
// Flags: each Start* and *Argv adds "--listen 127.0.0.1:0" and "--log-level warn" unless `flags`
// names --listen or --log-level itself (the programs refuse a flag given twice). Binaries are the
// ones this build made; the environment variables DMOE_DHT_BINARY, DMOE_SERVER_BINARY,
// DMOE_ROUTER_BINARY, DMOE_TRAIN_BINARY and DMOE_CLI_BINARY override them (benchmarks run against
// other builds that way). Linking this library makes the build produce those five programs.
//
// Not thread-safe: start and wait from the thread that owns the children (see process.h).
#ifndef DMOE_TESTS_TESTING_PROCESSES_H_
#define DMOE_TESTS_TESTING_PROCESSES_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "tests/testing/process.h"

namespace dmoe::testing {

// How long a program may take to print its start line: loading libtorch and building experts on a
// loaded two-core machine.
inline constexpr std::chrono::seconds kStartTimeout{60};

std::string DhtBinary();
std::string ServerBinary();
std::string RouterBinary();
std::string TrainBinary();
std::string CliBinary();

// The full argv of each program: its binary, the defaults above, then `flags`.
std::vector<std::string> DhtArgv(const std::vector<std::string>& flags = {});
std::vector<std::string> ServerArgv(const std::vector<std::string>& flags);
std::vector<std::string> RouterArgv(const std::vector<std::string>& flags);

// A running dmoe-dht.
struct DhtProcess {
  std::unique_ptr<Process> process;
  std::string address;  // "HOST:PORT" of its UDP socket, as printed
  std::string peer_id;  // 64 hex characters
};

// A running dmoe-server.
struct ServerProcess {
  std::unique_ptr<Process> process;
  std::string endpoint;  // "http://HOST:PORT", the listen address as printed
};

// A running dmoe-router.
struct RouterProcess {
  std::unique_ptr<Process> process;
  std::string endpoint;  // "http://HOST:PORT"
  std::string peer_id;   // what trainers sign publications for
};

// Wait for the start line of a child spawned from the matching *Argv, so that several children can
// start at once and be awaited in turn. kUnavailable, with the child's stderr, when it exits or
// prints no start line within `timeout`.
Result<DhtProcess> AwaitDht(std::unique_ptr<Process> process,
                            std::chrono::milliseconds timeout = kStartTimeout);
Result<ServerProcess> AwaitServer(std::unique_ptr<Process> process,
                                  std::chrono::milliseconds timeout = kStartTimeout);
Result<RouterProcess> AwaitRouter(std::unique_ptr<Process> process,
                                  std::chrono::milliseconds timeout = kStartTimeout);

// Spawn and await in one call; a failed spawn is its Status.
Result<DhtProcess> StartDht(const std::vector<std::string>& flags = {},
                            std::chrono::milliseconds timeout = kStartTimeout);
Result<ServerProcess> StartServer(const std::vector<std::string>& flags,
                                  std::chrono::milliseconds timeout = kStartTimeout);
Result<RouterProcess> StartRouter(const std::vector<std::string>& flags,
                                  std::chrono::milliseconds timeout = kStartTimeout);

// Starts one dmoe-server per entry of `flags` at once (they load in parallel), then awaits each in
// turn; the first failure is the Status, and the servers started so far are stopped with it.
Result<std::vector<ServerProcess>> StartServers(const std::vector<std::vector<std::string>>& flags,
                                                std::chrono::milliseconds timeout = kStartTimeout);

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_PROCESSES_H_
