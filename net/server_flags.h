// The command-line flags that bound what an HTTP server holds (net::HttpServerOptions), defined
// once for every process that serves: dmoe-server and dmoe-router take the same flags with the same
// meaning, help and defaults. For mains only (CLI11 stays behind a forward declaration here; link
// dmoe::net_flags).
#ifndef DMOE_NET_SERVER_FLAGS_H_
#define DMOE_NET_SERVER_FLAGS_H_

#include <cstddef>
#include <cstdint>

namespace CLI {
class App;
}  // namespace CLI

namespace dmoe::net {

// Where the parsed limits go; every pointer is required and must outlive the App's parse.
struct ServerLimitTargets {
  uint64_t* max_body_bytes = nullptr;          // --max-body-mib, in MiB on the command line
  uint64_t* max_held_request_bytes = nullptr;  // --max-held-request-mib, likewise
  size_t* max_connections = nullptr;           // --max-connections
  size_t* max_connections_per_ip = nullptr;    // --max-connections-per-ip
};

// Adds --max-body-mib, --max-held-request-mib, --max-connections and --max-connections-per-ip to
// `app`. A flag's default (shown by --help) is its target's value now; a given flag overwrites its
// target during app's parse (MiB as a fractional number, converted to bytes rounding down).
void AddServerLimitFlags(CLI::App& app, const ServerLimitTargets& targets);

}  // namespace dmoe::net

#endif  // DMOE_NET_SERVER_FLAGS_H_
