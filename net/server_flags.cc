#include "net/server_flags.h"

#include <CLI/CLI.hpp>
#include <sstream>
#include <string>

namespace dmoe::net {
namespace {

constexpr double kMiB = 1 << 20;

// A byte count given in MiB on the command line (64 for 64 MiB, 0.5 for 512 KiB).
void AddMibOption(CLI::App& app, const std::string& name, uint64_t* bytes,
                  const std::string& help) {
  std::ostringstream shown;  // As CLI11 shows a double default: 64, 0.5.
  shown << static_cast<double>(*bytes) / kMiB;
  app.add_option_function<double>(
         name, [bytes](double mib) { *bytes = static_cast<uint64_t>(mib * kMiB); }, help)
      ->default_str(shown.str());
}

}  // namespace

void AddServerLimitFlags(CLI::App& app, const ServerLimitTargets& targets) {
  AddMibOption(app, "--max-body-mib", targets.max_body_bytes, "request body limit in MiB");
  AddMibOption(app, "--max-held-request-mib", targets.max_held_request_bytes,
               "request bytes held at once until answered; past it bodies wait unread in their "
               "sockets (0: no limit)");
  app.add_option("--max-connections", *targets.max_connections,
                 "connections open at once (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-connections-per-ip", *targets.max_connections_per_ip,
                 "connections open at once from one IP address (0: no limit)")
      ->capture_default_str();
}

}  // namespace dmoe::net
