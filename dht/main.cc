// dmoe-dht: runs one DHT node until SIGINT or SIGTERM.
//
//   dmoe-dht --listen HOST:PORT [--public-endpoint HOST:PORT] [--bootstrap HOST:PORT ...]
//            [--identity FILE] [--db DIR] [--network NAME] [--log-level LEVEL]
//
// Prints "listening on udp://HOST:PORT peer_id=<hex>" on stdout once bound, then, with
// --public-endpoint, "announcing as udp://HOST:PORT"; logs go to stderr.
#include <utility>  // before Asio, which misses it under C++20

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include "core/clock.h"
#include "core/identity.h"
#include "core/logging.h"
#include "core/signals.h"
#include "dht/dht.h"

namespace {

// The process's wiring, in one place: one clock, one io_context run by one thread (the DHT
// strand's), and the Dht on them. Returns the exit code.
int Run(dmoe::dht::DhtOptions options) {
  // Signals are taken synchronously by this thread; every other thread, including the io thread,
  // inherits the blocked mask.
  dmoe::BlockTerminationSignals();

  const dmoe::RealClock& clock = dmoe::RealClock::Instance();
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  std::thread io_thread([&io] { io.run(); });
  auto join_io = [&] {
    work.reset();
    io_thread.join();
  };

  options.clock = &clock;
  options.io_context = &io;
  auto dht = dmoe::dht::Dht::Start(std::move(options));
  if (!dht.ok()) {
    std::cerr << "dmoe-dht: " << dht.status().ToString() << "\n";
    join_io();
    return 2;
  }
  std::string host_port = (*dht)->local_address();
  std::printf("listening on udp://%s peer_id=%s\n", host_port.c_str(), (*dht)->peer_id().c_str());
  std::string announced = (*dht)->announced_address();
  if (announced != host_port) std::printf("announcing as udp://%s\n", announced.c_str());
  std::fflush(stdout);
  spdlog::info("dmoe-dht listening on udp://{} peer_id={}", host_port, (*dht)->peer_id());

  int sig = dmoe::WaitForTerminationSignal();
  spdlog::info("dmoe-dht: signal {}, saving state and stopping", sig);
  (*dht)->Stop();
  dht->reset();
  // The io thread finishes once the stopped node's last handlers have run.
  join_io();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmoe-dht: a node of the dmoe Kademlia DHT"};
  dmoe::dht::DhtOptions options;
  std::string identity_path;
  std::string log_level = "info";
  app.add_option("--listen", options.listen, "UDP HOST:PORT to bind; port 0 picks a free one")
      ->required();
  app.add_option("--public-endpoint", options.public_address,
                 "UDP HOST:PORT other nodes reach this node at, when not the listen address (a "
                 "port forward or relay in front of it); they verify it with a ping before use");
  app.add_option("--bootstrap", options.bootstrap, "HOST:PORT of a node to join through")
      ->take_all();
  app.add_option("--identity", identity_path,
                 "identity file (created when missing); a fresh key per run when not given");
  app.add_option("--db", options.db_path, "database directory for routing table and own records");
  app.add_option("--network", options.node.network, "network name; nodes of others are ignored")
      ->capture_default_str();
  app.add_option("--rpc-timeout-ms", options.node.rpc_timeout_ms, "per-request timeout")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (dmoe::Status s = dmoe::SetUpLogging("dmoe-dht", log_level); !s.ok()) {
    std::cerr << "dmoe-dht: " << s.ToString() << "\n";
    return 2;
  }
  if (options.node.network.empty() || options.node.network.size() > 64) {
    std::cerr << "dmoe-dht: --network must be 1..64 bytes\n";
    return 2;
  }
  if (!identity_path.empty()) {
    auto identity = dmoe::LoadOrCreateIdentity(identity_path);
    if (!identity.ok()) {
      std::cerr << "dmoe-dht: identity " << identity_path << ": " << identity.status().ToString()
                << "\n";
      return 2;
    }
    options.identity = *identity;
  }

  return Run(std::move(options));
}
