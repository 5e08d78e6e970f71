// The records a node holds for others, with the acceptance rules of dht/record.h and the per-node
// limits of PROTOCOL section 6. Expired records are never returned and are removed by Sweep.
// Single-threaded; owned by the Node.
#ifndef DMOE_DHT_STORE_H_
#define DMOE_DHT_STORE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dht/record.h"

namespace dmoe::dht {

struct StoreLimits {
  RecordLimits record;
  size_t max_subkeys_per_key = 4096;
  size_t max_records = 100000;
};

class RecordStore {
 public:
  explicit RecordStore(StoreLimits limits) : limits_(limits) {}

  // Stores `record` if it passes every rule at `now_ms`; kNone when stored (or identical to the
  // stored one), else the reason it was refused. Verifies the signature through `cache`.
  RejectReason Put(const Record& record, int64_t now_ms, VerifiedCache& cache);

  // Unexpired records of `key` with subkey strictly after `cursor` (all when nullopt), by subkey.
  std::vector<const Record*> Get(const std::string& key, int64_t now_ms,
                                 const std::optional<std::string>& cursor) const;
  // Drops expired records; returns how many.
  size_t Sweep(int64_t now_ms);

  size_t size() const { return count_; }
  size_t key_count() const { return by_key_.size(); }
  const StoreLimits& limits() const { return limits_; }

 private:
  StoreLimits limits_;
  std::map<std::string, std::map<std::string, Record>> by_key_;
  size_t count_ = 0;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_STORE_H_
