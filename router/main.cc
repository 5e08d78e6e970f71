// dmoe-router: inference for model users, model publication for trainers, and the swarm dashboard
// (PROTOCOL section 5). Prints "listening on http://HOST:PORT" on stdout once it serves.
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "core/logging.h"
#include "core/openmp_env.h"
#include "core/signals.h"
#include "router/router.h"

int main(int argc, char** argv) {
  dmoe::UsePassiveOpenMpWaitPolicy(argv);
  // Before any thread starts (libtorch's start with at::set_num_threads): threads inherit the mask.
  dmoe::BlockTerminationSignals();
  CLI::App app{"dmoe-router: inference, model publication and the swarm dashboard"};
  dmoe::router::RouterOptions o;
  std::string listen = "127.0.0.1:0", log_level = "info";
  int threads = 2;
  double max_body_mib = 64;
  double max_held_request_mib = static_cast<double>(o.max_held_request_bytes) / (1 << 20);
  app.add_option("--listen", listen, "HTTP HOST:PORT; port 0 picks a free one")
      ->capture_default_str();
  app.add_option("--dht", o.dht_bootstrap, "HOST:PORT of a DHT node to join; repeatable")
      ->take_all()
      ->required();
  app.add_option("--dht-listen", o.dht_listen, "UDP HOST:PORT of the router's DHT node")
      ->capture_default_str();
  app.add_option("--network", o.dht_network, "DHT network name")->capture_default_str();
  app.add_option("--db", o.db_dir, "RocksDB directory where published models are kept")->required();
  app.add_option("--identity", o.identity_path,
                 "identity file of the router (its DHT node, and the peer id trainers sign "
                 "publications for); created when missing; default: a fresh key");
  app.add_option("--server-keys", o.server_keys_path,
                 "file of hex public keys: inference uses only experts these keys announce");
  app.add_option("--trainer-keys", o.trainer_keys_path,
                 "file of hex public keys allowed to publish models");
  app.add_flag("--open-publishing", o.open_publishing,
               "allow anyone to publish on a public address");
  app.add_option("--watch", o.watch_prefixes,
                 "grid prefix to show before any model names it, e.g. ffn.")
      ->take_all();
  app.add_option("--refresh-ms", o.swarm_refresh_ms, "how often the swarm view refreshes")
      ->capture_default_str();
  app.add_option("--inference-threads", o.inference_threads, "requests computed at once")
      ->capture_default_str();
  app.add_option("--threads", threads, "compute (intra-op) threads")->capture_default_str();
  app.add_option("--net-threads", o.net_threads, "network threads")->capture_default_str();
  app.add_option("--max-body-mib", max_body_mib, "request body limit in MiB")
      ->capture_default_str();
  app.add_option("--max-held-request-mib", max_held_request_mib,
                 "request bytes held at once; past it bodies wait unread (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-connections", o.max_connections, "connections open at once (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-connections-per-ip", o.max_connections_per_ip,
                 "connections open at once from one IP address (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-queued-inferences", o.max_queued_inferences,
                 "inference requests accepted and not yet answered; past it 503")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const dmoe::Status& s) {
    std::cerr << "dmoe-router: " << s.ToString() << "\n";
    return 2;
  };
  if (dmoe::Status s = dmoe::SetUpLogging("dmoe-router", log_level); !s.ok()) return fail(s);
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos)
    return fail(dmoe::InvalidArgumentError("--listen must be HOST:PORT"));
  o.listen_host = listen.substr(0, colon);
  try {
    int port = std::stoi(listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::out_of_range("port");
    o.listen_port = static_cast<uint16_t>(port);
  } catch (const std::exception&) {
    return fail(dmoe::InvalidArgumentError("--listen '" + listen + "': bad port"));
  }
  o.max_body_bytes = static_cast<uint64_t>(max_body_mib * (1 << 20));
  o.max_held_request_bytes = static_cast<uint64_t>(max_held_request_mib * (1 << 20));
  at::set_num_threads(threads);

  auto router = dmoe::router::Router::Start(std::move(o));
  if (!router.ok()) return fail(router.status());
  std::printf("peer_id %s\n", (*router)->peer_id().c_str());
  std::printf("listening on %s\n", (*router)->endpoint().c_str());
  std::fflush(stdout);
  spdlog::info("dashboard at {}/", (*router)->endpoint());
  int sig = dmoe::WaitForTerminationSignal();
  spdlog::info("signal {}: stopping", sig);
  (*router)->Stop();
  spdlog::info("stopped");
  return 0;
}
