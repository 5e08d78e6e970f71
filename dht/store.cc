#include "dht/store.h"

#include <algorithm>

namespace dmoe::dht {

void RecordStore::Count(const Entry& e, int delta) {
  auto bump = [delta](auto& map, const auto& key) {
    auto it = map.find(key);
    if (delta > 0) {
      if (it == map.end()) it = map.emplace(key, 0).first;
      it->second += static_cast<size_t>(delta);
    } else if (it != map.end()) {
      it->second -= std::min(it->second, static_cast<size_t>(-delta));
      if (it->second == 0) map.erase(it);
    }
  };
  bump(by_publisher_, e.record.publisher);
  if (!e.source.empty()) bump(by_source_, e.source);
  count_ = delta > 0 ? count_ + static_cast<size_t>(delta)
                     : count_ - std::min(count_, static_cast<size_t>(-delta));
}

void RecordStore::SweepKey(Entries& entries, int64_t now_ms) {
  for (auto it = entries.begin(); it != entries.end();) {
    if (it->second.record.expiration_ms <= now_ms) {
      Count(it->second, -1);
      it = entries.erase(it);
    } else {
      ++it;
    }
  }
}

RejectReason RecordStore::Put(const Record& record, int64_t now_ms, VerifiedCache& cache,
                              std::string_view source) {
  RejectReason shape = CheckRecordShape(record, now_ms, limits_.record);
  if (shape != RejectReason::kNone) return shape;
  if (!cache.Verify(record)) return RejectReason::kBadSignature;

  Slot slot{record.subkey, record.publisher};
  auto key_it = by_key_.find(record.key);
  if (key_it != by_key_.end()) {
    Entries& entries = key_it->second;
    auto it = entries.find(slot);
    if (it != entries.end() && it->second.record.expiration_ms > now_ms) {
      switch (DecideReplace(it->second.record, record)) {
        case ReplaceDecision::kReplace:
          // The same publisher's newer record: it takes the place (and the source) of the old one.
          Count(it->second, -1);
          it->second = Entry{record, std::string(source)};
          Count(it->second, +1);
          return RejectReason::kNone;
        case ReplaceDecision::kSame:
          return RejectReason::kNone;
        case ReplaceDecision::kLowerSeq:
        case ReplaceDecision::kOtherPublisher:  // not reached: the slot names the publisher
          return RejectReason::kLowerSeq;
      }
    }
    if (it != entries.end()) {  // expired: the slot is free again
      Count(it->second, -1);
      entries.erase(it);
    }
    auto publishers_of_subkey = [&] {
      size_t n = 0;
      for (auto p = entries.lower_bound(Slot{record.subkey, PublicKey{}});
           p != entries.end() && p->first.first == record.subkey; ++p) {
        ++n;
      }
      return n;
    };
    if (publishers_of_subkey() >= limits_.max_publishers_per_subkey ||
        entries.size() >= limits_.max_subkeys_per_key) {
      // Expired entries may be holding the space; reclaim them before refusing.
      SweepKey(entries, now_ms);
      if (publishers_of_subkey() >= limits_.max_publishers_per_subkey) {
        return RejectReason::kTooManyPublishers;
      }
      if (entries.size() >= limits_.max_subkeys_per_key) return RejectReason::kTooManySubkeys;
    }
  }
  bool over_publisher = publisher_count(record.publisher) >= limits_.max_records_per_publisher;
  bool over_source =
      !source.empty() && source_count(std::string(source)) >= limits_.max_records_per_source;
  bool over_total = count_ >= limits_.max_records;
  if ((over_publisher || over_source || over_total) &&
      (last_full_sweep_ms_ == INT64_MIN || now_ms - last_full_sweep_ms_ >= 1000)) {
    // Expired records may be holding the quota. At most one full sweep a second, so a flood of
    // refused stores costs a map lookup each, not a pass over the store.
    last_full_sweep_ms_ = now_ms;
    Sweep(now_ms);
    over_publisher = publisher_count(record.publisher) >= limits_.max_records_per_publisher;
    over_source =
        !source.empty() && source_count(std::string(source)) >= limits_.max_records_per_source;
    over_total = count_ >= limits_.max_records;
  }
  if (over_publisher) return RejectReason::kPublisherQuota;
  if (over_source) return RejectReason::kSourceQuota;
  if (over_total) return RejectReason::kStoreFull;
  Entry& e = by_key_[record.key][slot];
  e = Entry{record, std::string(source)};
  Count(e, +1);
  return RejectReason::kNone;
}

std::vector<const Record*> RecordStore::Get(
    const std::string& key, int64_t now_ms, const std::optional<std::string>& cursor,
    const std::optional<PublicKey>& cursor_publisher) const {
  std::vector<const Record*> out;
  auto key_it = by_key_.find(key);
  if (key_it == by_key_.end()) return out;
  const Entries& entries = key_it->second;
  auto it = entries.begin();
  if (cursor && cursor_publisher) {
    it = entries.upper_bound(Slot{*cursor, *cursor_publisher});
  } else if (cursor) {
    it = entries.lower_bound(Slot{*cursor, PublicKey{}});
    while (it != entries.end() && it->first.first == *cursor) ++it;
  }
  for (; it != entries.end(); ++it) {
    if (it->second.record.expiration_ms > now_ms) out.push_back(&it->second.record);
  }
  return out;
}

size_t RecordStore::Sweep(int64_t now_ms) {
  size_t before = count_;
  for (auto key_it = by_key_.begin(); key_it != by_key_.end();) {
    SweepKey(key_it->second, now_ms);
    if (key_it->second.empty()) {
      key_it = by_key_.erase(key_it);
    } else {
      ++key_it;
    }
  }
  return before - count_;
}

size_t RecordStore::publisher_count(const PublicKey& publisher) const {
  auto it = by_publisher_.find(publisher);
  return it == by_publisher_.end() ? 0 : it->second;
}

size_t RecordStore::source_count(const std::string& source) const {
  auto it = by_source_.find(source);
  return it == by_source_.end() ? 0 : it->second;
}

}  // namespace dmoe::dht
