// Kademlia routing table: k-buckets over 256-bit ids, split on the own-id side.
//
// buckets_[i] (i < last) holds contacts whose common prefix with the own id is exactly i bits; the
// last bucket holds every contact sharing at least `last` bits. Only the last bucket, the one
// covering the own id, ever splits, so the table keeps fine detail near its own id and about k
// contacts per distance class further away. Each bucket keeps its contacts least-recently-seen
// first and a replacement cache of the newest contacts that did not fit. A full bucket never evicts
// a live contact: it names its least-recently-seen contact for the node to ping
// (ping-before-evict); only a failed ping or RPC removes a contact, and the newest replacement
// takes its place.
//
// Single-threaded; owned by the Node.
#ifndef DMOE_DHT_ROUTING_TABLE_H_
#define DMOE_DHT_ROUTING_TABLE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "dht/address.h"
#include "dht/node_id.h"
#include "dht/types.h"

namespace dmoe::dht {

struct Contact {
  NodeId id{};
  Address address;
  int64_t last_seen_us = 0;
  int failures = 0;
  bool ping_pending = false;
};

// (id, address) pairs that proved the id's key at that address (a signed answer to our challenge,
// PROTOCOL section 6), so each pair is proven once. Bounded, oldest out first; an id has one
// proven address at a time.
class ProvenCache {
 public:
  explicit ProvenCache(size_t capacity) : capacity_(capacity) {}
  bool Contains(const NodeId& id, const Address& address) const {
    auto it = by_id_.find(id);
    return it != by_id_.end() && it->second == address;
  }
  void Insert(const NodeId& id, const Address& address) {
    if (capacity_ == 0) return;
    auto [it, inserted] = by_id_.insert_or_assign(id, address);
    if (!inserted) return;
    order_.push_back(id);
    while (order_.size() > capacity_) {
      by_id_.erase(order_.front());
      order_.pop_front();
    }
  }
  size_t size() const { return by_id_.size(); }

 private:
  size_t capacity_;
  std::map<NodeId, Address> by_id_;
  std::deque<NodeId> order_;
};

class RoutingTable {
 public:
  RoutingTable(const NodeId& self, size_t k, SybilLimits limits = {});

  // kRefused: a new contact past the Sybil placement limits.
  enum class UpdateResult { kAdded, kUpdated, kCached, kIgnoredSelf, kRefused };
  struct Update {
    UpdateResult result = UpdateResult::kIgnoredSelf;
    // Set when the bucket was full: the least-recently-seen contact, which the caller should ping
    // and report through Seen (it answered) or Failed (it did not).
    std::optional<Contact> ping;
  };

  // Records that `id` at `address` is alive now (it answered us or sent a valid request). A contact
  // whose LRU peer was seen within `stale_us` does not trigger a ping.
  Update Seen(const NodeId& id, const Address& address, int64_t now_us, int64_t stale_us);
  // An RPC to `id` failed after its retries. Once it has failed `max_failures` times in a row, the
  // newest replacement takes its place; without a replacement it stays (a sparse bucket keeps what
  // it has through a burst of loss) until it has failed `max_failures` + 2 times. True when
  // removed.
  bool Failed(const NodeId& id, int max_failures);
  // Whether Seen(id, address) would put `id` among the live contacts (it is there already, its
  // bucket has room or can split, and the Sybil limits allow it), not only in the replacement
  // cache. A node proves only the contacts it would keep.
  bool WouldAdd(const NodeId& id, const Address& address) const;
  void Remove(const NodeId& id);

  // The `n` known contacts closest to `target` by XOR, closest first.
  std::vector<Contact> Closest(const NodeId& target, size_t n) const;
  const Contact* Find(const NodeId& id) const;
  std::vector<Contact> AllContacts() const;

  // A random target in each bucket untouched for `idle_us`, for refresh lookups; such buckets count
  // as touched now.
  std::vector<NodeId> IdleBucketTargets(int64_t now_us, int64_t idle_us, std::mt19937_64& rng);
  // A random target in every bucket (used after joining).
  std::vector<NodeId> AllBucketTargets(std::mt19937_64& rng) const;

  size_t size() const { return size_; }
  size_t bucket_count() const { return buckets_.size(); }
  size_t replacement_count() const;
  const NodeId& self() const { return self_; }
  const SybilLimits& limits() const { return limits_; }
  size_t k() const { return k_; }

 private:
  struct Bucket {
    std::vector<Contact> contacts;     // least recently seen first
    std::deque<Contact> replacements;  // newest last
    int64_t last_changed_us = 0;
  };

  size_t BucketIndex(const NodeId& id) const;
  void SplitLast();
  bool OverLimits(const Bucket& bucket, const Address& address) const;

  NodeId self_;
  size_t k_;
  SybilLimits limits_;
  size_t size_ = 0;
  std::vector<Bucket> buckets_;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_ROUTING_TABLE_H_
