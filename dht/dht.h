// dmoe::dht::Dht: a Kademlia DHT node on UDP, for every process that announces or finds experts.
//
//   auto dht = Dht::Start({.listen = "0.0.0.0:0", .bootstrap = {"10.0.0.5:7000"}, ...,
//                          .clock = &clock});
//   (*dht)->Put("expert/ffn.3.14", peer_id, json, std::chrono::seconds(45), [](Result<int>) {});
//   (*dht)->GetMany({"prefix/ffn.", "prefix/ffn.3."}, std::chrono::milliseconds(500),
//                   [](std::vector<KeyResult> results) { ... });
//
// Records (PROTOCOL section 6, layout in dht/record.h) are (key, subkey) -> value, signed by their
// publisher and expiring at most 10 minutes ahead; records of one subkey from different publishers
// are kept side by side, and a get returns them all (the reader decides whom to believe).
// The node re-stores its own records on a period until they expire, so an announcement lives
// exactly as long as its publisher keeps putting it: staleness is expiry.
//
// Threads. The protocol core (dht/node.h) is single-threaded; Dht runs it on one strand of an
// Asio io_context with one UDP socket and two timers:
//
//   thread                        what runs there
//   the DHT strand                the protocol core, every datagram in and out, the node's timer
//                                 (retransmits, lookup deadlines, republish, refresh, sweeps), the
//                                 state save (periodic and at Stop), and every callback given to
//                                 GetMany and Put. It is the Dht's own thread, or, when
//                                 DhtOptions::io_context is given, whichever of the caller's
//                                 threads run that io_context (one handler at a time).
//   the calling thread            Start (resolves names, binds, opens the database), and the
//                                 waits of WaitBootstrapped, the *Blocking methods, Stats,
//                                 RoutingTableSize and Stop.
//
// Every public method is thread-safe. Callbacks must not block (post heavy work elsewhere). The
// methods that wait are for wiring, command-line tools and tests: never call them from a DHT
// callback or from a thread that runs the DHT's io_context.
//
// Time. The node reads the clock of DhtOptions::clock for record expiry, timeouts and its timer;
// the process's wiring passes its clock (a RealClock: the timer is a real Asio timer, so a
// FakeClock belongs to the core on the simulated network, dht/sim_network.h).
//
// Trust. Records carry Ed25519 signatures and are verified by every node that stores them and by
// every client that receives them, so a malicious node can withhold or delay records but not forge
// or alter them. Datagrams themselves are not signed (an Ed25519 signature plus verification would
// cost ~70 us per message): instead a reply is matched to its request by a random 64-bit
// transaction id and the source address, and the sender's public key must hash to the node id the
// request was sent to. A node id enters the routing table, at an address, only after a signed
// answer to a challenge from there (the requester's random txid, signed with the key the id derives
// from; cached per (id, address)), so a datagram carrying someone else's key moves nothing. Answers
// to a source without a valid token are no larger than its request (no reflection amplification),
// buckets and lookups keep at most 2 contacts per /24, gets run over 3 disjoint paths, and stores
// keep per-publisher and per-source quotas (PROTOCOL section 6). Lookups keep every candidate and
// route around contacts that stall, so bogus "closer nodes" slow a lookup by a soft timeout rather
// than stopping it.
//
// Announced addresses. A node behind a port forward or a relay receives at an address other than
// the one its datagrams come from; with `public_address` it sends that address as "a" on every
// request. A receiver answers the request at its source as usual but keeps the source out of its
// routing table: it PINGs the announced address, and only a PONG from there proving the same key
// puts the sender in the table, at the announced address. So a datagram naming someone else's
// address cannot move that address to another id, and since each such request causes at most one
// PING, no larger than the request, not retransmitted, with one in flight per address and at most
// NodeOptions::max_pending_verifications in all, forged "a" fields cannot turn a node into an
// amplifier.
//
// Persistence. With `db_path` (or `kv_store`), the routing table's contacts and the node's own
// records are saved to the "node_state" column family periodically and at Stop, and a restarted
// node pings the saved contacts to rejoin without a bootstrap address, then republishes its
// unexpired records.
#ifndef DMOE_DHT_DHT_H_
#define DMOE_DHT_DHT_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/status.h"
#include "dht/types.h"

namespace dmoe {
class Clock;
}  // namespace dmoe

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace dmoe::storage {
class KvStore;
}  // namespace dmoe::storage

namespace dmoe::dht {

struct DhtOptions {
  // HOST:PORT to bind (host may be a name or [IPv6]); port 0 picks a free port.
  std::string listen = "0.0.0.0:0";
  // HOST:PORT of nodes to join through; may be empty for the first node, or when saved contacts
  // exist.
  std::vector<std::string> bootstrap;
  // The node's key pair; a fresh one when absent.
  std::optional<Identity> identity;
  // Database directory for persistence (opened here), or an already open store; neither = no
  // persistence.
  std::string db_path;
  std::shared_ptr<storage::KvStore> kv_store;
  int64_t save_interval_ms = 60'000;
  // HOST:PORT other nodes must use to reach this node, when it differs from `listen` (a port
  // forward or a relay in front of it); empty = the bound address. A name is resolved once, at
  // Start. When set, it overrides node.public_address.
  std::string public_address;
  NodeOptions node;
  // The clock the node reads (see "Time" above). Required: Start refuses a missing one. Must
  // outlive the Dht.
  const Clock* clock = nullptr;
  // Run on this io_context instead of a thread of our own; the caller runs it and keeps it alive
  // past Stop.
  boost::asio::io_context* io_context = nullptr;
};

class Dht {
 public:
  // Resolves the addresses, binds the socket, opens the database and loads the saved state, then
  // starts joining (bootstrap addresses plus saved contacts) on the DHT strand and returns without
  // waiting for it. Blocks the caller for name resolution and the database. kInvalidArgument for
  // a bad or unresolvable address or a missing clock, kUnavailable when the port cannot be bound
  // or the database cannot be created or is locked by another process.
  static Result<std::unique_ptr<Dht>> Start(DhtOptions options);
  // Stops (see Stop).
  virtual ~Dht() = default;

  // Fixed at Start; any thread, without waiting. The bound address ("127.0.0.1:40123"), its port,
  // the address other nodes reach this node at (DhtOptions::public_address resolved, else the
  // bound address), and the node's peer id (hex BLAKE2b-256 of its key).
  virtual std::string local_address() const = 0;
  virtual uint16_t port() const = 0;
  virtual std::string announced_address() const = 0;
  virtual std::string peer_id() const = 0;

  // Runs the lookups of all `keys` concurrently and returns at once; `done` runs once, on the DHT
  // strand, with one KeyResult per key, in order, within `timeout`. Per key: OK with the records
  // found (see KeyResult), kNotFound when nobody holds any, kInvalidArgument for an empty or too
  // long key, kUnavailable when no peer is known or none answered, kDeadlineExceeded when
  // `timeout` came first with nothing found. After Stop, `done` is never called.
  virtual void GetMany(std::vector<std::string> keys, std::chrono::milliseconds timeout,
                       std::function<void(std::vector<KeyResult>)> done) = 0;
  // Signs and publishes (key, subkey) -> value for `ttl` and returns at once; the node re-stores
  // it every NodeOptions::republish_interval_ms until it expires. `done` runs once, on the DHT
  // strand, with the number of remote nodes that stored it; kInvalidArgument for a ttl outside
  // 1 ms..10 min or a key or subkey of the wrong size, kPayloadTooLarge for a value or record
  // over the limits (record.h), kUnavailable when no node could be reached (the record is still
  // kept and republished). After Stop, `done` is never called.
  virtual void Put(std::string key, std::string subkey, std::string value,
                   std::chrono::milliseconds ttl, std::function<void(Result<int>)> done) = 0;

  // Waits up to `timeout` for the join that Start began. OK once the node joined (or when it had
  // nobody to join); kUnavailable when no bootstrap or saved contact answered (the node keeps
  // trying in the background); kDeadlineExceeded when `timeout` passed first. May be called again.
  virtual Status WaitBootstrapped(std::chrono::milliseconds timeout) = 0;
  // GetMany, waiting for its answer. A node stopped before answering gives kUnavailable for every
  // key (after at most `timeout` plus 2 s).
  virtual std::vector<KeyResult> GetManyBlocking(std::vector<std::string> keys,
                                                 std::chrono::milliseconds timeout) = 0;
  // Put, waiting for its answer; kDeadlineExceeded when it has not come within 12 RPC timeouts
  // plus 2 s (the record is still kept and republished).
  virtual Result<int> PutBlocking(std::string key, std::string subkey, std::string value,
                                  std::chrono::milliseconds ttl) = 0;

  // A snapshot of the node's counters, and the number of contacts in its routing table. Waits for
  // the DHT strand, at most 5 s; a stopped or unresponsive node gives zeros.
  virtual NodeStats Stats() = 0;
  virtual size_t RoutingTableSize() = 0;

  // Saves state, closes the socket and, when the Dht owns its thread, joins it; with a caller's
  // io_context it waits (at most 5 s) for the strand to close the socket. Pending callbacks are
  // dropped. Idempotent; any thread but the DHT strand.
  virtual void Stop() = 0;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_DHT_H_
