// Router: what model users talk to (PROTOCOL section 5). It keeps the models trainers publish
// (RocksDB, versions only grow), answers inference through the same RemoteMixtureOfExperts code the
// trainers use (forward only), and shows the swarm: GET / (dashboard), GET /v1/swarm (JSON).
//
//   RouterOptions options;  // listen, dht bootstrap, db, trainer keys
//   DMOE_ASSIGN_OR_RETURN(auto router, Router::Start(std::move(options)));
//   std::cout << "listening on " << router->endpoint() << "\n";
//   router->Stop();
//
// Threads: network threads parse and answer; inference runs on the router's inference thread(s),
// never on a network thread; the swarm view refreshes on its own thread.
#ifndef DMOE_ROUTER_ROUTER_H_
#define DMOE_ROUTER_ROUTER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace dmoe::router {

struct RouterOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  int net_threads = 2;
  uint64_t max_body_bytes = 64ull << 20;
  // Bytes of requests held at once, from their arrival until answered (net::HttpServerOptions::
  // max_held_request_bytes); past it bodies wait unread in their sockets.
  uint64_t max_held_request_bytes = 16ull << 20;
  // Connections open at once, in all and per remote IP (0 = no limit); past them 503.
  size_t max_connections = 4096;
  size_t max_connections_per_ip = 256;
  // Inference threads: each runs one request's forward at a time.
  int inference_threads = 2;
  // Inference requests accepted and not yet answered (computing or waiting for a thread); past it
  // a request is answered 503 unavailable with Retry-After at once.
  int max_queued_inferences = 64;

  std::vector<std::string> dht_bootstrap;
  std::string dht_listen = "0.0.0.0:0";
  std::string dht_network = "dmoe";
  // The router's identity: its DHT node, and the peer id trainers sign publications for
  // (dmoe-req-v2, shown by GET /v1/health); empty = a fresh key at every start.
  std::string identity_path;
  // --server-keys: when set, inference uses only experts announced by the keys in this file.
  std::string server_keys_path;

  std::string db_dir;  // required: models live here
  // Keys allowed to publish models; empty = anyone (the router refuses a public address then,
  // unless open_publishing).
  std::string trainer_keys_path;
  bool open_publishing = false;

  // Grid prefixes the dashboard shows even before a model names them ("ffn.").
  std::vector<std::string> watch_prefixes;
  int64_t swarm_refresh_ms = 2000;
};

class Router {
 public:
  static Result<std::unique_ptr<Router>> Start(RouterOptions options);
  virtual ~Router() = default;
  virtual std::string endpoint() const = 0;
  virtual uint16_t port() const = 0;
  // The peer id publications must be signed for (PROTOCOL section 5).
  virtual std::string peer_id() const = 0;
  virtual void Stop() = 0;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_ROUTER_H_
