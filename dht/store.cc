#include "dht/store.h"

namespace dmoe::dht {

RejectReason RecordStore::Put(const Record& record, int64_t now_ms, VerifiedCache& cache) {
  RejectReason shape = CheckRecordShape(record, now_ms, limits_.record);
  if (shape != RejectReason::kNone) return shape;
  if (!cache.Verify(record)) return RejectReason::kBadSignature;

  auto key_it = by_key_.find(record.key);
  if (key_it != by_key_.end()) {
    auto& subkeys = key_it->second;
    auto it = subkeys.find(record.subkey);
    if (it != subkeys.end() && it->second.expiration_ms > now_ms) {
      switch (DecideReplace(it->second, record)) {
        case ReplaceDecision::kReplace:
          it->second = record;
          return RejectReason::kNone;
        case ReplaceDecision::kSame:
          return RejectReason::kNone;
        case ReplaceDecision::kLowerSeq:
          return RejectReason::kLowerSeq;
        case ReplaceDecision::kForeignSubkey:
          return RejectReason::kForeignSubkey;
      }
    }
    if (it != subkeys.end()) {  // expired: the subkey is free again
      it->second = record;
      return RejectReason::kNone;
    }
    if (subkeys.size() >= limits_.max_subkeys_per_key) {
      // Expired entries may be holding the space; reclaim them before refusing.
      std::erase_if(subkeys, [&](const auto& kv) { return kv.second.expiration_ms <= now_ms; });
      count_ = 0;
      for (const auto& [k, m] : by_key_) count_ += m.size();
      if (subkeys.size() >= limits_.max_subkeys_per_key) return RejectReason::kTooManySubkeys;
    }
  }
  if (count_ >= limits_.max_records) {
    Sweep(now_ms);
    if (count_ >= limits_.max_records) return RejectReason::kStoreFull;
  }
  by_key_[record.key].emplace(record.subkey, record);
  ++count_;
  return RejectReason::kNone;
}

std::vector<const Record*> RecordStore::Get(const std::string& key, int64_t now_ms,
                                            const std::optional<std::string>& cursor) const {
  std::vector<const Record*> out;
  auto key_it = by_key_.find(key);
  if (key_it == by_key_.end()) return out;
  const auto& subkeys = key_it->second;
  auto it = cursor ? subkeys.upper_bound(*cursor) : subkeys.begin();
  for (; it != subkeys.end(); ++it) {
    if (it->second.expiration_ms > now_ms) out.push_back(&it->second);
  }
  return out;
}

size_t RecordStore::Sweep(int64_t now_ms) {
  size_t removed = 0;
  for (auto key_it = by_key_.begin(); key_it != by_key_.end();) {
    removed += std::erase_if(key_it->second,
                             [&](const auto& kv) { return kv.second.expiration_ms <= now_ms; });
    if (key_it->second.empty()) {
      key_it = by_key_.erase(key_it);
    } else {
      ++key_it;
    }
  }
  count_ -= removed;
  return removed;
}

}  // namespace dmoe::dht
