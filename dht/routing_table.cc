#include "dht/routing_table.h"

#include <algorithm>

namespace dmoe::dht {

RoutingTable::RoutingTable(const NodeId& self, size_t k, SybilLimits limits)
    : self_(self), k_(k), limits_(limits) {
  buckets_.emplace_back();
}

bool RoutingTable::OverLimits(const Bucket& bucket, const Address& address) const {
  if (!limits_.Applies(address)) return false;
  if (limits_.per_subnet_per_bucket > 0) {
    size_t n = 0;
    for (const Contact& c : bucket.contacts) n += c.address.SameSubnet(address);
    if (n >= limits_.per_subnet_per_bucket) return true;
  }
  if (limits_.per_host > 0) {
    size_t n = 0;
    for (const Bucket& b : buckets_) {
      for (const Contact& c : b.contacts) n += c.address.SameHost(address);
    }
    if (n >= limits_.per_host) return true;
  }
  return false;
}

size_t RoutingTable::BucketIndex(const NodeId& id) const {
  size_t cpl = static_cast<size_t>(CommonPrefixLength(self_, id));
  return std::min(cpl, buckets_.size() - 1);
}

void RoutingTable::SplitLast() {
  size_t depth = buckets_.size() - 1;
  Bucket old = std::move(buckets_.back());
  buckets_.back() = Bucket{};
  buckets_.emplace_back();
  buckets_[depth].last_changed_us = old.last_changed_us;
  buckets_[depth + 1].last_changed_us = old.last_changed_us;
  for (Contact& c : old.contacts) buckets_[BucketIndex(c.id)].contacts.push_back(std::move(c));
  for (Contact& c : old.replacements) {
    buckets_[BucketIndex(c.id)].replacements.push_back(std::move(c));
  }
}

RoutingTable::Update RoutingTable::Seen(const NodeId& id, const Address& address, int64_t now_us,
                                        int64_t stale_us) {
  Update update;
  if (id == self_) return update;
  for (;;) {
    size_t index = BucketIndex(id);
    Bucket& bucket = buckets_[index];
    auto it = std::find_if(bucket.contacts.begin(), bucket.contacts.end(),
                           [&](const Contact& c) { return c.id == id; });
    if (it != bucket.contacts.end()) {
      Contact c = *it;
      c.address = address;
      c.last_seen_us = now_us;
      c.failures = 0;
      c.ping_pending = false;
      bucket.contacts.erase(it);
      bucket.contacts.push_back(c);
      bucket.last_changed_us = now_us;
      update.result = UpdateResult::kUpdated;
      return update;
    }
    if (OverLimits(bucket, address)) {
      update.result = UpdateResult::kRefused;
      return update;
    }
    if (bucket.contacts.size() < k_) {
      bucket.contacts.push_back(Contact{id, address, now_us, 0, false});
      bucket.last_changed_us = now_us;
      // A contact that made it in leaves the replacement cache.
      std::erase_if(bucket.replacements, [&](const Contact& c) { return c.id == id; });
      ++size_;
      update.result = UpdateResult::kAdded;
      return update;
    }
    if (index == buckets_.size() - 1 && buckets_.size() < 256) {
      SplitLast();
      continue;
    }
    std::erase_if(bucket.replacements, [&](const Contact& c) { return c.id == id; });
    bucket.replacements.push_back(Contact{id, address, now_us, 0, false});
    while (bucket.replacements.size() > k_) bucket.replacements.pop_front();
    update.result = UpdateResult::kCached;
    Contact& lru = bucket.contacts.front();
    if (!lru.ping_pending && now_us - lru.last_seen_us >= stale_us) {
      lru.ping_pending = true;
      update.ping = lru;
    }
    return update;
  }
}

bool RoutingTable::WouldAdd(const NodeId& id, const Address& address) const {
  if (id == self_) return false;
  size_t index = BucketIndex(id);
  const Bucket& bucket = buckets_[index];
  for (const Contact& c : bucket.contacts) {
    if (c.id == id) return true;
  }
  if (OverLimits(bucket, address)) return false;
  return bucket.contacts.size() < k_ || (index == buckets_.size() - 1 && buckets_.size() < 256);
}

bool RoutingTable::Failed(const NodeId& id, int max_failures) {
  Bucket& bucket = buckets_[BucketIndex(id)];
  std::erase_if(bucket.replacements, [&](const Contact& c) { return c.id == id; });
  auto it = std::find_if(bucket.contacts.begin(), bucket.contacts.end(),
                         [&](const Contact& c) { return c.id == id; });
  if (it == bucket.contacts.end()) return false;
  it->ping_pending = false;
  ++it->failures;
  if (it->failures < max_failures) return false;
  if (bucket.replacements.empty() && it->failures < max_failures + 2) return false;
  bucket.contacts.erase(it);
  --size_;
  if (!bucket.replacements.empty()) {
    bucket.contacts.insert(bucket.contacts.begin(), bucket.replacements.back());
    bucket.replacements.pop_back();
    ++size_;
  }
  return true;
}

void RoutingTable::Remove(const NodeId& id) {
  Bucket& bucket = buckets_[BucketIndex(id)];
  std::erase_if(bucket.replacements, [&](const Contact& c) { return c.id == id; });
  size_t before = bucket.contacts.size();
  std::erase_if(bucket.contacts, [&](const Contact& c) { return c.id == id; });
  size_ -= before - bucket.contacts.size();
}

std::vector<Contact> RoutingTable::Closest(const NodeId& target, size_t n) const {
  std::vector<Contact> all;
  all.reserve(size_);
  for (const Bucket& b : buckets_) all.insert(all.end(), b.contacts.begin(), b.contacts.end());
  auto cmp = [&](const Contact& a, const Contact& b) { return Closer(target, a.id, b.id); };
  if (all.size() > n) {
    std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n), all.end(), cmp);
    all.resize(n);
  } else {
    std::sort(all.begin(), all.end(), cmp);
  }
  return all;
}

const Contact* RoutingTable::Find(const NodeId& id) const {
  const Bucket& bucket = buckets_[BucketIndex(id)];
  for (const Contact& c : bucket.contacts) {
    if (c.id == id) return &c;
  }
  return nullptr;
}

std::vector<Contact> RoutingTable::AllContacts() const {
  std::vector<Contact> all;
  for (const Bucket& b : buckets_) all.insert(all.end(), b.contacts.begin(), b.contacts.end());
  return all;
}

std::vector<NodeId> RoutingTable::IdleBucketTargets(int64_t now_us, int64_t idle_us,
                                                    std::mt19937_64& rng) {
  std::vector<NodeId> targets;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (now_us - buckets_[i].last_changed_us >= idle_us) {
      buckets_[i].last_changed_us = now_us;
      targets.push_back(RandomIdWithPrefix(self_, static_cast<int>(i), rng));
    }
  }
  return targets;
}

std::vector<NodeId> RoutingTable::AllBucketTargets(std::mt19937_64& rng) const {
  std::vector<NodeId> targets;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    targets.push_back(RandomIdWithPrefix(self_, static_cast<int>(i), rng));
  }
  return targets;
}

size_t RoutingTable::replacement_count() const {
  size_t n = 0;
  for (const Bucket& b : buckets_) n += b.replacements.size();
  return n;
}

}  // namespace dmoe::dht
