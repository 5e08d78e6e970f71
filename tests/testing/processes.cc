#include "tests/testing/processes.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>

namespace dmoe::testing {
namespace {

std::string BinaryOr(const char* env, const char* built) {
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : built;
}

std::vector<std::string> WithDefaults(std::string binary, const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {std::move(binary)};
  auto names = [&](std::string_view flag) {
    return std::find(flags.begin(), flags.end(), flag) != flags.end();
  };
  if (!names("--listen")) argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
  if (!names("--log-level")) argv.insert(argv.end(), {"--log-level", "warn"});
  argv.insert(argv.end(), flags.begin(), flags.end());
  return argv;
}

// The rest of the first stdout line that starts with `prefix`, waiting for it at most `timeout`.
Result<std::string> AwaitLine(Process& process, std::string_view prefix,
                              std::chrono::milliseconds timeout) {
  std::optional<std::string> line = process.WaitForLine(prefix, timeout);
  if (line.has_value()) return line->substr(prefix.size());
  std::optional<int> status = process.Wait(std::chrono::milliseconds(0));
  return UnavailableError("`" + process.command_line() + "` " +
                          (status.has_value()
                               ? "exited (status " + std::to_string(*status) + ")"
                               : "printed no '" + std::string(prefix) + "' line in time") +
                          "; stderr:\n" + process.stderr_text());
}

// The first word of `text`.
std::string FirstWord(const std::string& text) { return text.substr(0, text.find(' ')); }

}  // namespace

std::string DhtBinary() { return BinaryOr("DMOE_DHT_BINARY", DMOE_DHT_BINARY); }
std::string ServerBinary() { return BinaryOr("DMOE_SERVER_BINARY", DMOE_SERVER_BINARY); }
std::string RouterBinary() { return BinaryOr("DMOE_ROUTER_BINARY", DMOE_ROUTER_BINARY); }
std::string TrainBinary() { return BinaryOr("DMOE_TRAIN_BINARY", DMOE_TRAIN_BINARY); }
std::string CliBinary() { return BinaryOr("DMOE_CLI_BINARY", DMOE_CLI_BINARY); }

std::vector<std::string> DhtArgv(const std::vector<std::string>& flags) {
  return WithDefaults(DhtBinary(), flags);
}
std::vector<std::string> ServerArgv(const std::vector<std::string>& flags) {
  return WithDefaults(ServerBinary(), flags);
}
std::vector<std::string> RouterArgv(const std::vector<std::string>& flags) {
  return WithDefaults(RouterBinary(), flags);
}

Result<DhtProcess> AwaitDht(std::unique_ptr<Process> process, std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::string rest, AwaitLine(*process, "listening on udp://", timeout));
  constexpr std::string_view kPeerId = "peer_id=";
  const size_t at = rest.find(kPeerId);
  DhtProcess dht;
  dht.address = FirstWord(rest);
  if (at != std::string::npos) dht.peer_id = FirstWord(rest.substr(at + kPeerId.size()));
  dht.process = std::move(process);
  return dht;
}

Result<ServerProcess> AwaitServer(std::unique_ptr<Process> process,
                                  std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::string rest, AwaitLine(*process, "listening on ", timeout));
  return ServerProcess{std::move(process), FirstWord(rest)};
}

Result<RouterProcess> AwaitRouter(std::unique_ptr<Process> process,
                                  std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::string rest, AwaitLine(*process, "listening on ", timeout));
  RouterProcess router;
  router.endpoint = FirstWord(rest);
  // Printed before "listening on", so WaitForLine kept it among the lines it skipped.
  constexpr std::string_view kPeerId = "peer_id ";
  for (const std::string& line : process->stdout_lines()) {
    if (line.starts_with(kPeerId)) router.peer_id = FirstWord(line.substr(kPeerId.size()));
  }
  router.process = std::move(process);
  return router;
}

Result<DhtProcess> StartDht(const std::vector<std::string>& flags,
                            std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, Process::Spawn(DhtArgv(flags)));
  return AwaitDht(std::move(process), timeout);
}

Result<ServerProcess> StartServer(const std::vector<std::string>& flags,
                                  std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, Process::Spawn(ServerArgv(flags)));
  return AwaitServer(std::move(process), timeout);
}

Result<RouterProcess> StartRouter(const std::vector<std::string>& flags,
                                  std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, Process::Spawn(RouterArgv(flags)));
  return AwaitRouter(std::move(process), timeout);
}

Result<std::vector<ServerProcess>> StartServers(const std::vector<std::vector<std::string>>& flags,
                                                std::chrono::milliseconds timeout) {
  std::vector<std::unique_ptr<Process>> spawned;
  for (const std::vector<std::string>& f : flags) {
    DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, Process::Spawn(ServerArgv(f)));
    spawned.push_back(std::move(process));
  }
  std::vector<ServerProcess> servers;
  for (std::unique_ptr<Process>& process : spawned) {
    DMOE_ASSIGN_OR_RETURN(ServerProcess server, AwaitServer(std::move(process), timeout));
    servers.push_back(std::move(server));
  }
  return servers;
}

}  // namespace dmoe::testing
