// The records a node holds for others, with the acceptance rules of dht/record.h and the per-node
// limits of PROTOCOL section 6. Expired records are never returned and are removed by Sweep.
//
// Records are kept per (key, subkey, publisher): two publishers of one subkey are stored side by
// side, and only the same publisher replaces its own record (higher seq, or the same seq with a
// later expiration). A subkey takes at most max_publishers_per_subkey publishers; past that a new
// publisher is refused and nothing established is evicted, so a flood of fresh keys cannot push
// out the records already held. Quotas per publisher key and per source address (the IP that sent
// the STORE) keep one stranger from taking the whole store.
//
// Single-threaded; owned by the Node.
#ifndef DMOE_DHT_STORE_H_
#define DMOE_DHT_STORE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dht/record.h"
#include "dht/types.h"

namespace dmoe::dht {

class RecordStore {
 public:
  explicit RecordStore(StoreLimits limits) : limits_(limits) {}

  // Stores `record` if it passes every rule at `now_ms`; kNone when stored (or identical to the
  // stored one), else the reason it was refused. Verifies the signature through `cache`. `source`
  // is the host the STORE came from (empty for the node's own records).
  RejectReason Put(const Record& record, int64_t now_ms, VerifiedCache& cache,
                   std::string_view source = {});

  // Unexpired records of `key` after the cursor, by (subkey, publisher): all when `cursor` is
  // nullopt; with a cursor subkey only, those of later subkeys; with both, those strictly after
  // (cursor, cursor_publisher).
  std::vector<const Record*> Get(const std::string& key, int64_t now_ms,
                                 const std::optional<std::string>& cursor,
                                 const std::optional<PublicKey>& cursor_publisher = {}) const;
  // Drops expired records; returns how many.
  size_t Sweep(int64_t now_ms);

  size_t size() const { return count_; }
  size_t key_count() const { return by_key_.size(); }
  size_t publisher_count(const PublicKey& publisher) const;
  size_t source_count(const std::string& source) const;
  const StoreLimits& limits() const { return limits_; }

 private:
  struct Entry {
    Record record;
    std::string source;
  };
  using Slot = std::pair<std::string, PublicKey>;  // (subkey, publisher)
  using Entries = std::map<Slot, Entry>;

  void Count(const Entry& e, int delta);
  // Removes the expired entries of one key.
  void SweepKey(Entries& entries, int64_t now_ms);

  StoreLimits limits_;
  std::map<std::string, Entries> by_key_;
  std::map<PublicKey, size_t> by_publisher_;
  std::map<std::string, size_t> by_source_;
  size_t count_ = 0;
  int64_t last_full_sweep_ms_ = INT64_MIN;  // none yet
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_STORE_H_
