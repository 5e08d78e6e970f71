// Router: what model users talk to (PROTOCOL section 5). It keeps the models trainers publish
// (RocksDB, versions only grow), answers inference through the same RemoteMixtureOfExperts code the
// trainers use (forward only), and shows the swarm: GET / (dashboard), GET /v1/swarm (JSON).
//
//   // The process's wiring (router/main.cc) builds these once and lends them:
//   net::BufferPool pool;
//   net::IoContext net_io(2);
//   DMOE_ASSIGN_OR_RETURN(auto dht, dht::Dht::Start(dht_options));  // a client node, the
//                                                                   // router's identity
//   RouterOptions options;  // listen, db, trainer keys, identity (the DHT node's)
//   RouterContext context{&RealClock::Instance(), &pool, &net_io, dht.get()};
//   DMOE_ASSIGN_OR_RETURN(auto router, Router::Start(std::move(options), context));
//   std::cout << "listening on " << router->endpoint() << "\n";
//   router->Stop();  // then dht->Stop(); the pool and net_io go last
//
// Threads. The router runs nothing on threads it does not own or borrow as listed here:
//
//   thread                         | owner        | what runs on it
//   -------------------------------+--------------+----------------------------------------------
//   net io (RouterContext::net_io) | the process  | HTTP parsing and answers of every route;
//                                  |              | GET /, /v1/health, /v1/swarm, /v1/models and
//                                  |              | /metrics are answered there at once (the model
//                                  |              | list is a RocksDB read); the swarm view's
//                                  |              | health-check calls complete there
//   inference (inference_threads)  | the router   | each POST .../infer (model lookup, decode,
//                                  |              | forward through the experts, encode), each
//                                  |              | PUT /v1/models/{name} after its body is in
//                                  |              | (state dict check, synced RocksDB write), and
//                                  |              | the model lookup and submission (which may
//                                  |              | build a new version) of each generation:
//                                  |              | POST .../generate, /openai/v1 completions
//                                  |              | and chat completions, /v1/ws requests
//   swarm refresh (1)              | the router   | walks the DHT grid every swarm_refresh_ms and
//                                  |              | waits for the health checks it sent
//   decode (1)                     | the router   | every generation's steps (router/
//                                  |              | generation.h): decoding through the experts,
//                                  |              | sampling, and each generate request's answer
//   expert calls (1)               | the router   | the WebSocket/HTTP client of inference's and
//                                  |              | generation's expert calls
//                                  (gating::ExpertCaller)
//   DHT (RouterContext::dht)       | the process  | the DHT node's protocol core and socket
//
// No network thread ever blocks: a request that needs compute, storage or the DHT is posted to an
// inference thread, and its answer is written from there (a generation's from the decode thread).
// Inference requests wait in a queue of at most max_queued_inferences, generations in one of at
// most max_generations (past either: 503 unavailable with Retry-After).
#ifndef DMOE_ROUTER_ROUTER_H_
#define DMOE_ROUTER_ROUTER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/status.h"
#include "gating/expert_caller.h"

namespace dmoe {
class Clock;
}  // namespace dmoe

namespace dmoe::dht {
class Dht;
}  // namespace dmoe::dht

namespace dmoe::net {
class BufferPool;
class IoContext;
}  // namespace dmoe::net

namespace dmoe::router {

struct RouterOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
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
  // Generations (POST .../generate) accepted and not yet done, decoding or waiting; past it a
  // request is answered 503 unavailable with Retry-After.
  int max_generations = 64;
  // Generations decoded together in one step (continuous batching); more wait for a place.
  int max_batch_sequences = 16;

  // Required: the router's identity, the one its DHT node (RouterContext::dht) was started with.
  // Its peer id is what trainers sign publications for (dmoe-req-v2, shown by GET /v1/health).
  std::optional<Identity> identity;
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

// What the process builds once, in its wiring, and lends the router. Every pointer is required and
// must outlive the router (its Stop included); the router never stops or closes any of them.
struct RouterContext {
  // Publication timestamps, the version bound, latencies, the dashboard's series, rate limits and
  // the trainers' signature windows.
  const Clock* clock = nullptr;
  // Request and answer bodies of the HTTP server and of the expert calls (net/buffer_pool.h).
  net::BufferPool* buffer_pool = nullptr;
  // The network threads: the HTTP server and the swarm view's health checks run here.
  net::IoContext* net_io = nullptr;
  // A started DHT node (a client node is enough) with RouterOptions::identity; the router finds
  // experts and walks the grid through it.
  dht::Dht* dht = nullptr;
  // Optional: expert servers in this process, by endpoint, whose calls skip the network
  // (gating::CallerOptions::local): bench/lm's baseline with the experts local. dmoe-router has
  // none.
  std::map<std::string, gating::LocalEndpoint> local_experts;
};

class Router {
 public:
  // Opens the model database, loads the key files, starts the swarm view and the inference
  // threads, and listens. Blocks until the router serves or failed; returns then. Errors:
  // kInvalidArgument for a missing db_dir, identity or context pointer, an identity other than the
  // DHT node's, a bad key file, or a public listen address without trainer_keys_path (unless
  // open_publishing); kUnavailable when the address cannot be bound or the database is locked by
  // another process; the code of the failing step otherwise. On error nothing is left running.
  static Result<std::unique_ptr<Router>> Start(RouterOptions options, RouterContext context);
  // Stops (see Stop).
  virtual ~Router() = default;

  // "http://HOST:PORT" (HOST 127.0.0.1 when listening on 0.0.0.0) and the bound port. Any thread.
  virtual std::string endpoint() const = 0;
  virtual uint16_t port() const = 0;
  // The peer id publications must be signed for (PROTOCOL section 5). Any thread.
  virtual std::string peer_id() const = 0;
  // Stops accepting, lets requests in flight answer for up to 5 s, stops the inference threads
  // (queued requests are dropped unanswered) and the swarm view. Blocks; must not be called from a
  // network or inference thread. Idempotent. The lent context is left running.
  virtual void Stop() = 0;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_ROUTER_H_
