// Finding experts: a cached view of the DHT's expert announcements (ExpertDirectory) and the beam
// search over the grid that picks each sample's top-k live experts (PROTOCOL section 6).
//
// A grid of dims [g0, g1] is scored per dimension: the gating gives every sample a score for each
// coordinate of each dimension, and expert ffn.i.j scores s0[i] + s1[j]. The search walks the
// announced grid one level at a time: `prefix/ffn.` names the live first coordinates,
// `prefix/ffn.i.` the live second coordinates under i, and the last level's `expert/<uid>` records
// give endpoints. It is best-first with an admissible bound (the prefix's partial score plus the
// best coordinate score of every dimension still open), so it returns the exact top-k among the
// live experts, holes and all; `beam_size` is how many unresolved prefixes one sample may ask the
// DHT about per round, and every round is one batched DHT get for all samples.
//
// Time: the directory reads a Clock given at construction (unix time for record expiry, monotonic
// time for deadlines); BeamSearch reads its directory's clock, and its deadline is on that clock.
// Waits for the DHT run in real time (RealTimeBound).
//
// Torch-free; thread-safe as stated per class.
#ifndef DMOE_GATING_BEAM_SEARCH_H_
#define DMOE_GATING_BEAM_SEARCH_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "dht/types.h"

namespace dmoe::dht {
class Dht;
}  // namespace dmoe::dht

namespace dmoe::gating {

struct DirectoryOptions {
  // Upper bound on how long a key's records are reused (they are also dropped when the first of
  // them expires), so that newly announced experts are found.
  std::chrono::milliseconds max_cache_age{30'000};
  // How long "nobody announces this key" (or a failed lookup) is remembered.
  std::chrono::milliseconds negative_cache_age{2'000};
  // Cap on one batched DHT lookup (the forward deadline caps it too).
  std::chrono::milliseconds lookup_timeout{2'000};
};

// Records per DHT key, cached until they expire. Shared by every layer of a trainer; thread-safe.
class ExpertDirectory {
 public:
  using KeyResults = std::vector<dht::KeyResult>;
  // The DHT's GetMany, or a test double.
  using FetchFn =
      std::function<void(std::vector<std::string> keys, std::chrono::milliseconds timeout,
                         std::function<void(KeyResults)> done)>;

  // `dht` (a client node: NodeOptions::client = true) and `clock` must outlive the directory.
  ExpertDirectory(dht::Dht* dht, const Clock& clock, DirectoryOptions options = {});
  // With a stand-in for the DHT. `clock` must outlive the directory.
  ExpertDirectory(FetchFn fetch, const Clock& clock, DirectoryOptions options = {});

  // True and *records filled when `key` is cached and unexpired.
  bool Lookup(const std::string& key, std::vector<dht::Record>* records) const;
  // Fetches every key of `keys` that is not cached in ONE batched lookup, waiting at most until
  // `deadline`; afterwards every key is cached (those that failed or timed out as empty, for
  // negative_cache_age). Blocks the caller: never call from a network or DHT thread.
  void Fetch(const std::vector<std::string>& keys, Deadline deadline);
  // Forgets a key (e.g. `expert/<uid>` after its expert failed) so the next search asks again.
  void Invalidate(const std::string& key);

  // Batched lookups sent so far.
  uint64_t fetches() const;
  // What cache entries expire by, and what every deadline given to the directory is on.
  const Clock& clock() const { return clock_; }

 private:
  struct Entry {
    std::vector<dht::Record> records;
    int64_t expires_ms = 0;
  };
  FetchFn fetch_;
  DirectoryOptions options_;
  const Clock& clock_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> cache_;
  uint64_t fetches_ = 0;
};

// One publisher's announcement of an expert: an `expert/<uid>` record whose subkey is its
// publisher's peer id (records with any other subkey are ignored) and whose value names an
// endpoint. Replicas of one uid from different publishers are kept side by side.
struct Replica {
  std::string endpoint;  // "http://host:port"
  std::string peer_id;   // PeerIdOf(publisher)
  PublicKey publisher{};
};

// The replicas that `records` (of one `expert/<uid>` key) announce, one per publisher; malformed
// records, and those whose subkey is not their publisher's peer id, are left out.
std::vector<Replica> ReplicasOf(const std::vector<dht::Record>& records);

// Whether the search may use a replica now.
enum class Usability {
  kUsable,
  kUnusable,  // banned, lying, unlisted, ...
  kPending,   // not decided yet: ReplicaPolicy::resolve must run first (e.g. the endpoint's proof)
};

// How the search treats replicas; every function is optional.
struct ReplicaPolicy {
  // Absent: every replica is usable.
  std::function<Usability(const Replica&)> check;
  // Decides the given pending replicas, blocking until they are decided or `deadline`. The search
  // calls it once per round with every replica it found pending.
  std::function<void(const std::vector<Replica>&, Deadline)> resolve;
  // Lower is better: the usable replica of the lowest cost is chosen (ties by peer id), never the
  // one whose record expires last. Absent: all cost the same.
  std::function<double(const Replica&)> cost;
  // Whether `prefix/` records of this publisher count (--server-keys). Absent: all publishers'
  // prefix records are merged.
  std::function<bool(const PublicKey&)> publisher_allowed;
};

// One expert chosen for one sample.
struct ExpertChoice {
  std::string uid;
  std::vector<int64_t> coords;  // its grid coordinates
  float score = 0;              // sum of the sample's coordinate scores
  std::string endpoint;         // "http://host:port" of the publisher picked
  std::string peer_id;
};

struct BeamSearchOptions {
  std::string uid_prefix = "ffn";  // the grid prefix is uid_prefix + "."
  std::vector<int64_t> grid_size;  // coordinates per dimension, 1 to 4 dimensions
  int k_best = 4;
  int beam_size = 4;  // unresolved prefixes per sample per round, >= 1
};

struct BeamSearchStats {
  int rounds = 0;  // DHT round trips (batched lookups that actually fetched)
  bool deadline_hit = false;
};

// Whether an endpoint may be used now (false for banned peers).
using EndpointFilter = std::function<bool(const std::string& endpoint)>;

// For each of `n` samples, its top `k_best` live experts by score, best first (fewer when fewer
// are live or the deadline came first). `scores[d]` holds n x grid_size[d] floats, row-major. An
// expert is live when one of its replicas (ReplicasOf its `expert/<uid>` records) is usable under
// `policy`; among several, the one of the lowest cost is taken. Blocks for DHT lookups and for
// `policy.resolve`, never past `deadline` (on directory.clock()) by more than one lookup's slack.
std::vector<std::vector<ExpertChoice>> BeamSearch(ExpertDirectory& directory,
                                                  const BeamSearchOptions& options,
                                                  const std::vector<std::vector<float>>& scores,
                                                  int64_t n, const ReplicaPolicy& policy,
                                                  Deadline deadline,
                                                  BeamSearchStats* stats = nullptr);

// As above, with every replica whose endpoint `usable` accepts usable (all when `usable` is empty).
std::vector<std::vector<ExpertChoice>> BeamSearch(ExpertDirectory& directory,
                                                  const BeamSearchOptions& options,
                                                  const std::vector<std::vector<float>>& scores,
                                                  int64_t n, const EndpointFilter& usable,
                                                  Deadline deadline,
                                                  BeamSearchStats* stats = nullptr);

// Text of a uid from its prefix and coordinates ("ffn", {3, 14} -> "ffn.3.14").
std::string UidOf(const std::string& uid_prefix, const std::vector<int64_t>& coords);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_BEAM_SEARCH_H_
