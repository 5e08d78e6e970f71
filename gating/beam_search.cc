#include "gating/beam_search.h"

#include <algorithm>
#include <condition_variable>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <set>

#include "core/integer.h"

#include "dht/dht.h"

namespace dmoe::gating {
namespace {

// A node of the search tree: `coords` fixes the first coords.size() dimensions. `bound` is its
// exact score for a full uid, else an upper bound on the score of every expert below it.
struct Node {
  float bound = 0;
  std::vector<int64_t> coords;
  bool operator<(const Node& other) const { return bound < other.bound; }
};

bool ParseIndex(const std::string& text, int64_t limit, int64_t* out) {
  const std::optional<int64_t> v = ParseInteger<int64_t>(text);
  if (!v || *v < 0 || *v >= limit) return false;
  *out = *v;
  return true;
}

std::string KeyOf(const std::string& uid_prefix, const std::vector<int64_t>& coords, size_t dims) {
  if (coords.size() == dims) return "expert/" + UidOf(uid_prefix, coords);
  std::string key = "prefix/" + uid_prefix + ".";
  for (int64_t c : coords) key += std::to_string(c) + ".";
  return key;
}

// The replica of `replicas` to use: usable under `policy`, of the lowest cost. Returns kPending
// (and adds the pending ones to `to_resolve`) when none is usable yet but some are undecided.
Usability PickReplica(const std::vector<Replica>& replicas, const ReplicaPolicy& policy,
                      std::map<std::string, Replica>* to_resolve, ExpertChoice* choice) {
  const Replica* best = nullptr;
  double best_cost = 0;
  std::vector<const Replica*> pending;
  for (const Replica& r : replicas) {
    const Usability u = policy.check ? policy.check(r) : Usability::kUsable;
    if (u == Usability::kPending) pending.push_back(&r);
    if (u != Usability::kUsable) continue;
    const double cost = policy.cost ? policy.cost(r) : 0.0;
    if (!best || cost < best_cost || (cost == best_cost && r.peer_id < best->peer_id)) {
      best = &r;
      best_cost = cost;
    }
  }
  if (best) {
    choice->endpoint = best->endpoint;
    choice->peer_id = best->peer_id;
    return Usability::kUsable;
  }
  if (pending.empty()) return Usability::kUnusable;
  for (const Replica* r : pending) to_resolve->emplace(r->endpoint + " " + r->peer_id, *r);
  return Usability::kPending;
}

}  // namespace

std::vector<Replica> ReplicasOf(const std::vector<dht::Record>& records) {
  std::vector<Replica> out;
  std::set<std::string> seen;
  for (const dht::Record& r : records) {
    const std::string peer_id = PeerIdOf(r.publisher);
    if (r.subkey != peer_id || !seen.insert(peer_id).second) continue;
    auto j = nlohmann::json::parse(r.value, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("endpoint") ||
        !j["endpoint"].is_string()) {
      continue;
    }
    out.push_back({j["endpoint"].get<std::string>(), peer_id, r.publisher});
  }
  return out;
}

std::string UidOf(const std::string& uid_prefix, const std::vector<int64_t>& coords) {
  std::string uid = uid_prefix;
  for (int64_t c : coords) uid += "." + std::to_string(c);
  return uid;
}

ExpertDirectory::ExpertDirectory(dht::Dht* dht, const Clock& clock, DirectoryOptions options)
    : ExpertDirectory(
          [dht](std::vector<std::string> keys, std::chrono::milliseconds timeout,
                std::function<void(KeyResults)> done) {
            dht->GetMany(std::move(keys), timeout, std::move(done));
          },
          clock, options) {}

ExpertDirectory::ExpertDirectory(FetchFn fetch, const Clock& clock, DirectoryOptions options)
    : fetch_(std::move(fetch)), options_(options), clock_(clock) {}

bool ExpertDirectory::Lookup(const std::string& key, std::vector<dht::Record>* records) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end() || it->second.expires_ms <= clock_.NowUnixMs()) return false;
  *records = it->second.records;
  return true;
}

void ExpertDirectory::Invalidate(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_.erase(key);
}

uint64_t ExpertDirectory::fetches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fetches_;
}

void ExpertDirectory::Fetch(const std::vector<std::string>& keys, Deadline deadline) {
  std::vector<std::string> missing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = clock_.NowUnixMs();
    std::set<std::string> seen;
    for (const std::string& key : keys) {
      auto it = cache_.find(key);
      if ((it == cache_.end() || it->second.expires_ms <= now) && seen.insert(key).second) {
        missing.push_back(key);
      }
    }
    if (missing.empty()) return;
    ++fetches_;
  }
  // The callback may come after we gave up (deadline): it writes into a shared slot only.
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    KeyResults results;
  };
  auto slot = std::make_shared<Slot>();
  auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_.Now());
  auto timeout = std::clamp(remaining, std::chrono::milliseconds(1), options_.lookup_timeout);
  fetch_(missing, timeout, [slot](KeyResults results) {
    std::lock_guard<std::mutex> lock(slot->mu);
    slot->results = std::move(results);
    slot->done = true;
    slot->cv.notify_all();
  });
  KeyResults results;
  {
    std::unique_lock<std::mutex> lock(slot->mu);
    const Deadline until =
        std::min(deadline, clock_.Now() + timeout + std::chrono::milliseconds(200));
    slot->cv.wait_until(lock, RealTimeBound(clock_, until), [&] { return slot->done; });
    if (slot->done) results = std::move(slot->results);
  }
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_.NowUnixMs();
  for (const std::string& key : missing) {
    Entry entry;
    entry.expires_ms = now + options_.negative_cache_age.count();
    for (dht::KeyResult& r : results) {
      if (r.key != key || r.records.empty()) continue;
      int64_t expiry = now + options_.max_cache_age.count();
      for (const dht::Record& record : r.records) expiry = std::min(expiry, record.expiration_ms);
      entry.records = std::move(r.records);
      entry.expires_ms = std::max(expiry, now + 1);
      break;
    }
    cache_[key] = std::move(entry);
  }
}

std::vector<std::vector<ExpertChoice>> BeamSearch(ExpertDirectory& directory,
                                                  const BeamSearchOptions& options,
                                                  const std::vector<std::vector<float>>& scores,
                                                  int64_t n, const EndpointFilter& usable,
                                                  Deadline deadline, BeamSearchStats* stats) {
  ReplicaPolicy policy;
  if (usable) {
    policy.check = [&usable](const Replica& r) {
      return usable(r.endpoint) ? Usability::kUsable : Usability::kUnusable;
    };
  }
  return BeamSearch(directory, options, scores, n, policy, deadline, stats);
}

std::vector<std::vector<ExpertChoice>> BeamSearch(ExpertDirectory& directory,
                                                  const BeamSearchOptions& options,
                                                  const std::vector<std::vector<float>>& scores,
                                                  int64_t n, const ReplicaPolicy& policy,
                                                  Deadline deadline, BeamSearchStats* stats) {
  const size_t dims = options.grid_size.size();
  const size_t beam = static_cast<size_t>(std::max(1, options.beam_size));
  const size_t k = static_cast<size_t>(std::max(0, options.k_best));
  std::vector<std::vector<ExpertChoice>> chosen(n);
  if (dims == 0 || k == 0 || n == 0) return chosen;

  // rest[i][d] = sum over dimensions >= d of sample i's best coordinate score.
  std::vector<std::vector<float>> rest(n, std::vector<float>(dims + 1, 0.0f));
  for (int64_t i = 0; i < n; ++i) {
    for (size_t d = dims; d-- > 0;) {
      const float* row = scores[d].data() + i * options.grid_size[d];
      rest[i][d] = rest[i][d + 1] + *std::max_element(row, row + options.grid_size[d]);
    }
  }
  auto partial = [&](int64_t i, const std::vector<int64_t>& coords) {
    float s = 0;
    for (size_t d = 0; d < coords.size(); ++d) {
      s += scores[d][i * options.grid_size[d] + coords[d]];
    }
    return s + rest[i][coords.size()];
  };

  std::vector<std::priority_queue<Node>> queues(n);
  std::vector<bool> done(n, false);
  for (int64_t i = 0; i < n; ++i) queues[i].push(Node{rest[i][0], {}});

  std::vector<dht::Record> records;
  for (;;) {
    std::set<std::string> needed;
    std::map<std::string, Replica> to_resolve;
    for (int64_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      auto& queue = queues[i];
      std::vector<Node> pending, deferred;
      while (!queue.empty() && chosen[i].size() < k && pending.size() < beam) {
        Node node = queue.top();
        queue.pop();
        const std::string key = KeyOf(options.uid_prefix, node.coords, dims);
        if (!directory.Lookup(key, &records)) {
          needed.insert(key);
          pending.push_back(std::move(node));
          continue;
        }
        if (node.coords.size() == dims) {
          // A full uid: its score is exact, so it is the next best unless a pending node above it
          // might still hold better ones.
          // Its replicas are checked even when it waits, so that every proof a round needs is
          // asked for in one batch.
          ExpertChoice choice;
          const Usability u = PickReplica(ReplicasOf(records), policy, &to_resolve, &choice);
          if (!pending.empty()) {
            deferred.push_back(std::move(node));
            continue;
          }
          if (u == Usability::kPending) {
            pending.push_back(std::move(node));
            continue;
          }
          if (u == Usability::kUnusable) continue;
          choice.uid = UidOf(options.uid_prefix, node.coords);
          choice.coords = node.coords;
          choice.score = node.bound;
          chosen[i].push_back(std::move(choice));
          continue;
        }
        const size_t d = node.coords.size();
        std::set<int64_t> children;
        for (const dht::Record& r : records) {
          int64_t c;
          if (policy.publisher_allowed && !policy.publisher_allowed(r.publisher)) continue;
          if (ParseIndex(r.subkey, options.grid_size[d], &c)) children.insert(c);
        }
        for (int64_t c : children) {
          Node child{0, node.coords};
          child.coords.push_back(c);
          child.bound = partial(i, child.coords);
          queue.push(std::move(child));
        }
      }
      for (Node& node : pending) queue.push(std::move(node));
      for (Node& node : deferred) queue.push(std::move(node));
      if (chosen[i].size() >= k || queue.empty()) done[i] = true;
    }
    if (needed.empty() && to_resolve.empty()) break;
    if (directory.clock().Now() >= deadline) {
      if (stats) stats->deadline_hit = true;
      break;
    }
    if (!to_resolve.empty()) {
      // No resolver means nothing will ever decide them: they stay out.
      if (!policy.resolve && needed.empty()) break;
      std::vector<Replica> replicas;
      for (auto& [key, r] : to_resolve) replicas.push_back(std::move(r));
      if (policy.resolve) policy.resolve(replicas, deadline);
    }
    if (!needed.empty()) {
      directory.Fetch(std::vector<std::string>(needed.begin(), needed.end()), deadline);
      if (stats) ++stats->rounds;
    }
  }
  return chosen;
}

}  // namespace dmoe::gating
