// The types a caller of the DHT sees without the protocol core: the node's options (with the limits
// of its routing table and record store), its counters, and the answer for one key of a get. Every
// other module includes these through dht/dht.h; dht/node.h (the core) builds on them.
//
// Plain values: copyable, no threads, no invariants beyond those stated per field.
#ifndef DMOE_DHT_TYPES_H_
#define DMOE_DHT_TYPES_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "dht/address.h"
#include "dht/record.h"

namespace dmoe::dht {

// Sybil placement limits (as BEP 42 intends): a new contact is refused when its bucket already
// holds `per_subnet_per_bucket` contacts of its /24 (IPv4) or /64 (IPv6), or the table holds
// `per_host` contacts at its IP. Local and private addresses are exempt unless `on_private`
// (a LAN or loopback swarm shares one subnet; the simulated network turns them on). 0 = no limit.
struct SybilLimits {
  size_t per_subnet_per_bucket = 2;
  size_t per_host = 2;
  bool on_private = false;
  bool Applies(const Address& a) const { return on_private || !a.IsLocalOrPrivate(); }
};

// The per-node limits of the record store (dht/store.h, PROTOCOL section 6).
struct StoreLimits {
  RecordLimits record;
  // Records of one key, all subkeys and publishers together.
  size_t max_subkeys_per_key = 4096;
  // Publishers side by side under one (key, subkey).
  size_t max_publishers_per_subkey = 16;
  size_t max_records = 100000;
  // Records one publisher key may hold on this node, and records stored from one source address
  // (host, without the port). Records the node stores itself (its own puts) count for neither.
  size_t max_records_per_publisher = 2000;
  size_t max_records_per_source = 10000;
};

// Options of the protocol core (dht/node.h); a Dht takes them as DhtOptions::node.
struct NodeOptions {
  std::string network = "dmoe";  // nodes of other networks are ignored
  size_t k = 20;
  size_t alpha = 3;
  // A get stops once this many nodes answered with records. Above 1 because the subkeys of one key
  // (prefix/ffn. from many servers) may sit on different nodes: stopping at the first node that has
  // any would silently lose the others.
  size_t get_quorum = 5;
  int64_t rpc_timeout_ms = 1000;
  // An unanswered request is resent this many times, at the soft timeout (an RTT estimate), before
  // the RPC fails at rpc_timeout_ms.
  int retransmits = 2;
  int64_t min_soft_timeout_ms = 5;
  int max_failures = 1;            // failed RPCs in a row before a contact leaves the routing table
  int64_t ping_stale_ms = 15'000;  // a full bucket pings its LRU contact only if not seen this long
  int64_t republish_interval_ms = 60'000;  // own records are re-stored this often until they expire
  int64_t refresh_interval_ms = 10 * 60'000;  // idle buckets get a lookup this often
  int64_t sweep_interval_ms = 10'000;
  StoreLimits store;
  double requests_per_second_per_address = 2000;
  double request_burst_per_address = 4000;
  // A client node (short-lived CLI, or a process that only reads) asks others to keep it out of
  // their routing tables.
  bool client = false;
  // After joining, look up one random id in every bucket to fill the routing table.
  bool join_refresh = true;
  // The address other nodes must use to reach this node when it is not the one its datagrams come
  // from (a port forward, a relay in front of it). Sent as "a" on every request.
  std::optional<Address> public_address;
  // Announced addresses of other nodes being verified at once, at most. A request announcing
  // another address while this many are in flight leaves the table as it is; the sender's next
  // request tries again.
  size_t max_pending_verifications = 64;
  // Proven identities (PROTOCOL section 6): (id, address) pairs that answered a signed challenge,
  // remembered so each pair is proven once; and tokens other nodes gave this one, by address.
  size_t proven_cache_size = 8192;
  size_t token_cache_size = 8192;
  // A token this node hands out is valid for this long (one epoch) to two (the next one).
  int64_t token_epoch_ms = 5 * 60'000;
  // Sybil placement limits of the routing table; each lookup keeps at most
  // sybil.per_subnet_per_bucket candidates per /24 (/64) too.
  SybilLimits sybil;
  // Gets (FIND_VALUE lookups) run over this many disjoint paths (S/Kademlia, dht/lookup.h).
  size_t disjoint_paths = 3;
  uint64_t seed = 0;  // rng seed for transaction ids and refresh targets; 0 = random
};

// The counters of one node since it started; Dht::Stats returns a snapshot.
struct NodeStats {
  uint64_t datagrams_in = 0;
  uint64_t datagrams_out = 0;
  uint64_t dropped_oversized = 0;
  uint64_t dropped_malformed = 0;
  uint64_t dropped_version = 0;
  uint64_t dropped_foreign_network = 0;
  uint64_t dropped_rate_limited = 0;
  uint64_t dropped_unsolicited = 0;   // replies matching no pending request
  uint64_t dropped_wrong_sender = 0;  // replies whose key is not the expected node id
  uint64_t rpcs_sent = 0;
  uint64_t rpcs_timed_out = 0;
  uint64_t retransmits = 0;
  uint64_t records_rejected_in_answers = 0;  // invalid records other nodes sent us
  // Announced addresses ("a"): PINGs sent to verify one, those answered by the announcing key (the
  // sender entered the table there), and requests that sent none because that address was already
  // being verified, max_pending_verifications were in flight, or the PING would have been larger
  // than the request.
  uint64_t verifications_sent = 0;
  uint64_t verifications_passed = 0;
  uint64_t verifications_skipped = 0;
  // Signed challenges ("q"/"p"): asked of others, and answers that proved the key or did not.
  uint64_t proofs_requested = 0;
  uint64_t proofs_passed = 0;
  uint64_t proofs_failed = 0;
  // Answers to a source without a valid token that were cut to the request's size, and those not
  // sent at all because even the smallest form was larger.
  uint64_t answers_truncated = 0;
  uint64_t answers_withheld = 0;
  std::array<uint64_t, static_cast<size_t>(RejectReason::kCount)> store_rejected{};

  uint64_t rejected(RejectReason r) const { return store_rejected[static_cast<size_t>(r)]; }
};

// The answer for one key of a get.
struct KeyResult {
  std::string key;
  // OK with at least one record; kNotFound when the lookup finished without any; kUnavailable when
  // no peer is known or none answered; kDeadlineExceeded when the deadline came first with nothing.
  Status status;
  // Unexpired, signatures verified, sorted by (subkey, publisher). One subkey may have several
  // records, one per publisher: the DHT never decides between publishers (PROTOCOL section 6).
  std::vector<Record> records;
  int rounds = 0;
  int rpcs = 0;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_TYPES_H_
