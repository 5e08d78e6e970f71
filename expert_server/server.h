// ExpertServer: what a contributor runs to donate compute (PROTOCOL section 4). It hosts a set of
// experts behind HTTP and WebSocket, trains them from the gradients trainers send, checkpoints them
// to RocksDB, and announces them in the DHT. This header is torch-free: a program that starts a
// server compiles without libtorch.
//
//   // The process's wiring (expert_server/main.cc, Serve) builds these once and lends them:
//   ExpertServerOptions options;  // uids, expert type, listen address, ...
//   DMOE_RETURN_IF_ERROR(ExpertServer::CheckOptions(options));  // before opening anything
//   options.clock = &clock;        // the process's clock (required)
//   options.identity = identity;   // the server's key pair (required)
//   options.io = &io;              // the process's net::IoContext (optional)
//   options.store = store.get();   // an open storage::ExpertStore (optional: persistence)
//   options.dht = dht.get();       // a started dht::Dht with `identity` (optional: announcing)
//   DMOE_ASSIGN_OR_RETURN(auto server, ExpertServer::Start(std::move(options)));
//   std::cout << "listening on " << server->listen_endpoint() << "\n";
//   ...
//   server->Stop();  // stop accepting, finish in-flight work, final checkpoint, stop announcing
//   dht->Stop();     // after the server: first the node, whose state is saved in the store's
//   store->Close();  // database, then the store; io and the buffer pool go last
//
// Threads. Who runs what, from Start until Stop returns:
//
//   thread                      count                    runs
//   --------------------------  -----------------------  ---------------------------------------
//   network (net::IoContext)    options.io's threads, or accept, parse, check and decode
//                               net_threads of its own   requests, hand them to the runtime; write
//                                                        answers; /v1/health, /v1/experts, /metrics
//   runtime                     runtime.threads (1)      merge requests into batches, forward,
//                                                        backward and optimizer step, encode
//                                                        answers, snapshot experts for checkpoints
//   libtorch intra-op           SetComputeThreads        the tensor ops of one batch, in parallel
//                               (process_memory.h)
//   maintenance                 1                        the checkpoint timer (snapshot via the
//                                                        runtime, then the RocksDB write) and the
//                                                        announcement timer (DHT puts)
//   DHT (options.dht)           the node's: 1, with an   the Kademlia node: lookups, stores,
//                               io_context of its own    re-publishing, saving its state to RocksDB
//   RocksDB (options.store)     RocksDB's own            flushes and compactions
//
// No network thread ever computes, writes to disk or waits for the runtime. The DHT node and the
// store are the process's, lent to the server: Start reads the experts' checkpoints from the store
// and waits for the node's join on the calling thread; the maintenance thread (and Stop) writes
// checkpoints and puts announcements; the server never stops or closes either. The process's DHT
// node keeps a thread of its own rather than the network's because it saves its state to RocksDB.
// Start and Stop block and must be called from a thread that is none of these; the getters may be
// called from any thread.
#ifndef DMOE_EXPERT_SERVER_SERVER_H_
#define DMOE_EXPERT_SERVER_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "expert_server/options.h"

namespace dmoe::dht {
class Dht;
}  // namespace dmoe::dht

namespace dmoe::net {
class BufferPool;
class IoContext;
}  // namespace dmoe::net

namespace dmoe::storage {
class ExpertStore;
}  // namespace dmoe::storage

namespace dmoe::expert_server {

struct ExpertServerOptions {
  // The experts to host (valid uids, PROTOCOL section 1).
  std::vector<std::string> uids;
  // The process's clock: timestamps, request-signature windows, request latencies, batch timeouts,
  // checkpoint and announcement periods. Required; must outlive the server.
  const Clock* clock = nullptr;
  // The process's network io_context, shared with its other servers and clients; must outlive the
  // server. nullptr: the server runs one of its own with net_threads threads.
  net::IoContext* io = nullptr;
  // The process's buffer pool (net/buffer_pool.h): request and answer bodies are taken from and
  // given back to it; must outlive the server. nullptr: the server's HTTP server keeps its own.
  net::BufferPool* buffer_pool = nullptr;
  // The server's key pair: GET /v1/health proves it, trainers sign requests for its peer id, and
  // its announcements are published under that peer id. Required; with `dht`, the identity that
  // node was started with.
  std::optional<Identity> identity;
  // The process's expert store: each expert resumes from its newest intact checkpoint there, and
  // is checkpointed there every checkpoint_every_s, on CheckpointNow and at Stop. nullptr: no
  // persistence. Not owned: it must stay open until Stop returns; its owner closes it after.
  storage::ExpertStore* store = nullptr;
  // The process's DHT node, started with `identity`: the server announces its experts through it
  // every announce_every_s. nullptr: the server does not announce. Not owned: it must run until
  // Stop returns; its owner stops it after.
  dht::Dht* dht = nullptr;

  ExpertConfig expert;  // type, hidden_dim, seed (each uid derives its own initialization)
  OptimizerOptions optimizer;
  RuntimeOptions runtime;  // its clock and on_batch are the server's own

  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  // The host written into announcements, with the port the server listens on; defaults to
  // listen_host (or 127.0.0.1 for 0.0.0.0).
  std::string public_host;
  // HOST:PORT written into announcements instead, for a server others reach at an address other
  // than the one it listens on (a port forward, a relay in front of it). Setting it together with
  // public_host is kInvalidArgument.
  std::string public_endpoint;
  int net_threads = 2;  // used only without `io`
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

  // Hex Ed25519 public keys allowed to send backward; empty = anyone may.
  std::string trainer_keys_path;
  // Needed to serve training without trainer keys on a non-loopback address.
  bool open_training = false;

  // Used only with a `store`.
  int64_t checkpoint_every_s = 60;

  // Used only with a `dht`.
  int64_t announce_every_s = 15;
  int64_t announce_ttl_s = 45;

  // Fault injection for experiments: this fraction of forward/backward requests fail with
  // kUnavailable before any compute.
  double fail_rate = 0.0;
  // Fault injection for the gating client's anomaly tests: this fraction of forward answers carry
  // NaN outputs (computed normally, then overwritten) instead of the expert's y.
  double nan_rate = 0.0;
};

// What the server has done so far, as one snapshot (ExpertServer::stats()).
struct ExpertServerStats {
  // Optimizer steps of each hosted expert, by uid.
  std::map<std::string, int64_t> steps;
  int64_t batches = 0;  // batches computed
  int64_t tasks = 0;    // requests answered from those batches (a refusal before compute is none)
  int64_t samples = 0;  // samples (rows of x) computed
};

class ExpertServer {
 public:
  // The refusals of Start that follow from the options' values alone: no uid, a bad or repeated
  // uid, a rate outside [0, 1], public_endpoint malformed or set together with public_host, and
  // training open to a public address (listen or announced) without trainer_keys_path or
  // open_training. Reads nothing and opens nothing, so a process calls it before it opens the
  // identity file, the database and the DHT node it would lend (dmoe-server refuses an operator's
  // mistake with nothing touched). kInvalidArgument naming what is wrong; Start checks it again.
  static Status CheckOptions(const ExpertServerOptions& options);
  // Checks the options (CheckOptions, and: a clock and an identity are set, and `dht`, if set, was
  // started with that identity), loads the trainer keys, loads or initializes every expert
  // (resuming each from its newest checkpoint in `store`), binds, starts the runtime and the
  // maintenance thread and, with a `dht`, waits up to 5 s for that node to join (a node that did
  // not join keeps trying; Start still succeeds) and announces. Blocks until the server serves.
  // kInvalidArgument for bad options (those above, an unknown expert type, a checkpoint of another
  // type or width), the key file's error, kUnavailable when the port is taken. On an error nothing
  // of the server keeps running; the lent store and DHT node are left as they were given.
  static Result<std::unique_ptr<ExpertServer>> Start(ExpertServerOptions options);
  // Stops (see Stop).
  virtual ~ExpertServer() = default;

  // "http://HOST:PORT" as announced in the DHT. Any thread; never blocks.
  virtual std::string endpoint() const = 0;
  // "http://HOST:PORT" the server listens on (127.0.0.1 for 0.0.0.0, [::1] for [::]): where a
  // client on this machine connects. Equals endpoint() unless public_host or public_endpoint is
  // set. Any thread; never blocks.
  virtual std::string listen_endpoint() const = 0;
  // The bound port. Any thread; never blocks.
  virtual uint16_t port() const = 0;
  // Hex BLAKE2b-256 of the server's public key, as /v1/health and the DHT records name it.
  virtual std::string peer_id() const = 0;
  // A consistent-enough snapshot for tests and tools: each field is read atomically, the fields
  // not together. Any thread; takes the runtime's lock briefly, never waits for compute.
  virtual ExpertServerStats stats() const = 0;
  // Checkpoints every expert now: snapshots them between batches, then writes each. Blocks until
  // written; one checkpoint at a time. kUnavailable without a store; otherwise the first
  // expert's write error (the other experts are still written). Not from a network or runtime
  // thread.
  virtual Status CheckpointNow() = 0;
  // Answers one request blob of the WebSocket protocol (PROTOCOL section 4: metadata id, op, uid)
  // from this process, with no socket in between: for callers that host the experts themselves
  // (bench/lm's baseline with the experts local, through gating::CallerOptions::local). It is
  // checked as a message on a connection whose upgrade was not signed (so a server with trainer
  // keys refuses its backward) and counted, batched and computed as any other. `answer` runs
  // exactly once with the answer blob (an error blob when refused), on a runtime thread or before
  // this returns, and must not block. The bytes of `message` are not used after the call. Any
  // thread but a runtime one.
  virtual void CallLocal(std::span<const uint8_t> message,
                         std::function<void(std::vector<uint8_t>)> answer) = 0;
  // Graceful stop: stops the timers (announcements are no longer refreshed), stops accepting and
  // lets requests in flight answer (up to 5 s), fails what is still queued with kUnavailable, and
  // writes a final checkpoint to the store. The lent DHT node and store are left running and open:
  // once Stop returns their owner stops the node (the announcements then expire within
  // announce_ttl_s) and closes the store. Blocks; idempotent; not from a network or runtime thread.
  virtual void Stop() = 0;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_SERVER_H_
