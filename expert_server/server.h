// ExpertServer: what a contributor runs to donate compute (PROTOCOL section 4). It hosts a set of
// experts behind HTTP and WebSocket, trains them from the gradients trainers send, checkpoints them
// to RocksDB, and announces them in the DHT.
//
//   ExpertServerOptions options;  // uids, expert type, listen address, db, dht, ...
//   DMOE_ASSIGN_OR_RETURN(auto server, ExpertServer::Start(std::move(options)));
//   std::cout << "listening on " << server->listen_endpoint() << "\n";
//   ...
//   server->Stop();  // stop accepting, finish in-flight work, final checkpoint, stop announcing
//
// Threads: network threads (net) parse requests and post them to the compute runtime; runtime
// thread(s) compute and encode answers; one storage thread writes checkpoints; the DHT node runs on
// its own strand. Start and Stop must be called from a thread that is none of these.
#ifndef DMOE_EXPERT_SERVER_SERVER_H_
#define DMOE_EXPERT_SERVER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "expert_server/expert.h"
#include "expert_server/optimizer.h"
#include "expert_server/runtime.h"

namespace dmoe::expert_server {

struct ExpertServerOptions {
  // The experts to host (valid uids, PROTOCOL section 1).
  std::vector<std::string> uids;
  ExpertConfig expert;  // type, hidden_dim, seed (each uid derives its own initialization)
  OptimizerOptions optimizer;
  RuntimeOptions runtime;

  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  // The host written into announcements, with the port the server listens on; defaults to
  // listen_host (or 127.0.0.1 for 0.0.0.0).
  std::string public_host;
  // HOST:PORT written into announcements instead, for a server others reach at an address other
  // than the one it listens on (a port forward, a relay in front of it). Setting it together with
  // public_host is kInvalidArgument.
  std::string public_endpoint;
  int net_threads = 2;
  uint64_t max_body_bytes = 64ull << 20;
  int ws_max_in_flight = 64;
  // Bytes of requests (HTTP bodies, WebSocket messages) held at once, from their arrival until
  // answered; beyond it requests wait unread in their sockets (net::HttpServerOptions::
  // max_held_request_bytes). Two full batches of an ffn d=1024 backward (x and grad_y, 256 samples)
  // are 4 MiB: enough to keep the runtime busy, while 16 clients' requests held at once would be
  // 32 MiB of the server's peak memory. One request larger than this is still let in alone.
  uint64_t max_held_request_bytes = 4ull << 20;
  // Connections open at once, in all and per remote IP (0 = no limit); past them 503
  // (net::HttpServerOptions::max_connections, max_connections_per_ip).
  size_t max_connections = 4096;
  size_t max_connections_per_ip = 256;

  // Identity file (created when missing); empty = a fresh identity for this run.
  std::string identity_path;
  // Hex Ed25519 public keys allowed to send backward; empty = anyone may.
  std::string trainer_keys_path;
  // Needed to serve training without trainer keys on a non-loopback address.
  bool open_training = false;

  // RocksDB directory; empty = no persistence.
  std::string db_dir;
  int64_t checkpoint_every_s = 60;
  int keep_checkpoints = 3;

  // DHT: bootstrap addresses (HOST:PORT); empty = do not announce. The server runs its own DHT
  // node bound to dht_listen.
  std::vector<std::string> dht_bootstrap;
  std::string dht_listen = "0.0.0.0:0";
  // UDP HOST:PORT the DHT node announces to other nodes when it differs from dht_listen
  // (DhtOptions::public_address); empty = the bound address.
  std::string dht_public_endpoint;
  std::string dht_network = "dmoe";
  int64_t announce_every_s = 15;
  int64_t announce_ttl_s = 45;

  // Fault injection for experiments: this fraction of forward/backward requests fail with
  // kUnavailable before any compute.
  double fail_rate = 0.0;
  // Fault injection for the gating client's anomaly tests: this fraction of forward answers carry
  // NaN outputs (computed normally, then overwritten) instead of the expert's y.
  double nan_rate = 0.0;
};

class ExpertServer {
 public:
  // Loads or initializes every expert, binds, starts the runtime, the checkpoint thread and the
  // announcer. kInvalidArgument for bad options (e.g. open training on a public address without
  // --open-training), kUnavailable when the port or the database is taken.
  static Result<std::unique_ptr<ExpertServer>> Start(ExpertServerOptions options);
  virtual ~ExpertServer() = default;

  // "http://HOST:PORT" as announced in the DHT.
  virtual std::string endpoint() const = 0;
  // "http://HOST:PORT" the server listens on (127.0.0.1 for 0.0.0.0, [::1] for [::]): where a
  // client on this machine connects. Equals endpoint() unless public_host or public_endpoint is
  // set.
  virtual std::string listen_endpoint() const = 0;
  virtual uint16_t port() const = 0;
  virtual std::string peer_id() const = 0;
  virtual const Runtime& runtime() const = 0;
  // Checkpoints every expert now (blocks until written). kUnavailable without a database.
  virtual Status CheckpointNow() = 0;
  // Graceful stop; idempotent.
  virtual void Stop() = 0;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_SERVER_H_
