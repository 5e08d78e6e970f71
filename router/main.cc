// dmoe-router: inference for model users, model publication for trainers, and the swarm dashboard
// (PROTOCOL section 5). Prints "listening on http://HOST:PORT" on stdout once it serves.
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <optional>

#include "core/clock.h"
#include "core/host_port.h"
#include "core/identity.h"
#include "core/logging.h"
#include "core/openmp_env.h"
#include "core/signals.h"
#include "dht/dht.h"
#include "net/buffer_pool.h"
#include "net/io_context.h"
#include "net/server_flags.h"
#include "router/router.h"

int main(int argc, char** argv) {
  dmoe::UsePassiveOpenMpWaitPolicy(argv);
  // Before any thread starts (libtorch's start with at::set_num_threads): threads inherit the mask.
  dmoe::BlockTerminationSignals();
  CLI::App app{"dmoe-router: inference, model publication and the swarm dashboard"};
  dmoe::router::RouterOptions o;
  dmoe::dht::DhtOptions dht_options;
  dht_options.node.client = true;
  std::string listen = "127.0.0.1:0", log_level = "info", identity_path;
  int threads = 2, net_threads = 2;
  app.add_option("--listen", listen, "HTTP HOST:PORT; port 0 picks a free one")
      ->capture_default_str();
  app.add_option("--dht", dht_options.bootstrap, "HOST:PORT of a DHT node to join; repeatable")
      ->take_all()
      ->required();
  app.add_option("--dht-listen", dht_options.listen, "UDP HOST:PORT of the router's DHT node")
      ->capture_default_str();
  app.add_option("--network", dht_options.node.network, "DHT network name")->capture_default_str();
  app.add_option("--db", o.db_dir, "RocksDB directory where published models are kept")->required();
  app.add_option("--identity", identity_path,
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
  app.add_option("--net-threads", net_threads, "network threads")->capture_default_str();
  dmoe::net::AddServerLimitFlags(app, {.max_body_bytes = &o.max_body_bytes,
                                       .max_held_request_bytes = &o.max_held_request_bytes,
                                       .max_connections = &o.max_connections,
                                       .max_connections_per_ip = &o.max_connections_per_ip});
  app.add_option("--max-queued-inferences", o.max_queued_inferences,
                 "inference requests accepted and not yet answered; past it 503")
      ->capture_default_str();
  app.add_option("--max-generations", o.max_generations,
                 "generations accepted and not yet done (decoding or waiting); past it 503")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-batch-sequences", o.max_batch_sequences,
                 "generations decoded together in one step; more wait for a place")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const dmoe::Status& s) {
    std::cerr << "dmoe-router: " << s.ToString() << "\n";
    return 2;
  };
  if (dmoe::Status s = dmoe::SetUpLogging("dmoe-router", log_level); !s.ok()) return fail(s);
  dmoe::Result<dmoe::HostPort> listen_at = dmoe::ParseHostPort(listen);
  if (!listen_at.ok()) return fail(listen_at.status());
  o.listen_host = listen_at->host;
  o.listen_port = listen_at->port;
  at::set_num_threads(threads);

  // The process's wiring: the clock, buffer pool, network threads and DHT node, built once here and
  // lent to the router, which outlives none of them (it is declared after them).
  const dmoe::Clock& clock = dmoe::RealClock::Instance();
  dmoe::net::BufferPool buffer_pool;
  dmoe::net::IoContext net_io(net_threads);
  // One identity: the router's DHT node, and the peer id publications are signed for.
  if (identity_path.empty()) {
    o.identity = dmoe::Identity::Generate();
  } else {
    dmoe::Result<dmoe::Identity> identity = dmoe::LoadOrCreateIdentity(identity_path);
    if (!identity.ok()) return fail(identity.status());
    o.identity = std::move(identity).value();
  }
  dht_options.clock = &clock;
  dht_options.identity = o.identity;
  auto dht = dmoe::dht::Dht::Start(std::move(dht_options));
  if (!dht.ok()) return fail(dht.status());
  if (dmoe::Status joined = (*dht)->WaitBootstrapped(std::chrono::seconds(5)); !joined.ok()) {
    spdlog::warn("DHT: {} (will keep trying)", joined.ToString());
  }
  auto router = dmoe::router::Router::Start(std::move(o), {.clock = &clock,
                                                           .buffer_pool = &buffer_pool,
                                                           .net_io = &net_io,
                                                           .dht = dht->get(),
                                                           .local_experts = {}});
  if (!router.ok()) return fail(router.status());
  std::printf("peer_id %s\n", (*router)->peer_id().c_str());
  std::printf("listening on %s\n", (*router)->endpoint().c_str());
  std::fflush(stdout);
  spdlog::info("dashboard at {}/", (*router)->endpoint());
  int sig = dmoe::WaitForTerminationSignal();
  spdlog::info("signal {}: stopping", sig);
  (*router)->Stop();
  (*dht)->Stop();
  spdlog::info("stopped");
  return 0;
}
