// What the layers of one trainer (or router) share: the DHT cache, the connections, the peers'
// health, and which endpoints proved which keys.
//
//   auto swarm = std::make_shared<gating::Swarm>(dht.get(), clock, options);
//   auto chosen = BeamSearch(swarm->directory(), search, scores, n, swarm->Policy(),
//                            swarm->clock().Now() + 5s);
//
// Trust: a replica (an `expert/<uid>` record) is used only after its endpoint answered a fresh
// challenge with a proof by the record's publisher key (cached for proof_ttl); an endpoint that
// answers without one makes its publisher a liar for liar_ttl; one that does not answer counts as
// an unreachable peer (banned at once, probed by a new challenge when the ban runs out). Health,
// bans and the choice among replicas go by publisher key, never by the record's expiry.
//
// Time: one Clock, given at construction, for everything the swarm holds (cache expiry, bans,
// proofs, latency); every Deadline passed to the swarm or its parts is on clock(). Layers that use
// the swarm take their deadlines from clock() too.
//
// Threads: every method may be called from any thread. Resolve blocks (never call it from a
// network or DHT thread); the rest return at once, sending probes and challenges asynchronously.
#ifndef DMOE_GATING_SWARM_H_
#define DMOE_GATING_SWARM_H_

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "gating/beam_search.h"
#include "gating/expert_caller.h"
#include "gating/peer_health.h"

namespace dmoe::dht {
class Dht;
}  // namespace dmoe::dht

namespace dmoe::gating {

struct SwarmOptions {
  DirectoryOptions directory;
  HealthOptions health;
  CallerOptions caller;  // set caller.identity to sign requests
  // --server-keys: when set, only experts (and grid prefixes) announced by these keys are used.
  std::optional<std::set<PublicKey>> server_keys;
  // How long an endpoint's proof of a key is trusted before it must prove it again.
  std::chrono::milliseconds proof_ttl{600'000};
  // How long a publisher whose endpoint answered a challenge without a valid proof stays unused.
  std::chrono::milliseconds liar_ttl{600'000};
  // The longest a challenge may take (the search's deadline caps it too).
  std::chrono::milliseconds proof_timeout{2'000};
};

class Swarm {
 public:
  // `dht` (a client node) and `clock` must outlive the swarm.
  Swarm(dht::Dht* dht, const Clock& clock, SwarmOptions options = {});
  // With a stand-in for the DHT (tests). `clock` must outlive the swarm.
  Swarm(ExpertDirectory::FetchFn fetch, const Clock& clock, SwarmOptions options = {});
  // Fails the calls in flight (kUnavailable) and closes the connections. Not from a callback.
  ~Swarm();
  Swarm(const Swarm&) = delete;
  Swarm& operator=(const Swarm&) = delete;

  // Whether calls may go to `endpoint` now; starts the probe of a peer whose ban ran out.
  bool Usable(const std::string& endpoint);

  // The policy BeamSearch uses: replicas by proof, liars, --server-keys, health and latency.
  ReplicaPolicy Policy();
  Usability Check(const Replica& replica);
  // Challenges every pending replica's endpoint at once and waits until all answered or
  // `deadline` (capped by proof_timeout).
  void Resolve(const std::vector<Replica>& replicas, Deadline deadline);
  // Lower is better: the peer's latency average, plus a second per failed round in a row.
  double Cost(const Replica& replica) const;
  bool Liar(const std::string& peer_id) const;

  const Clock& clock() const { return clock_; }
  ExpertDirectory& directory() { return directory_; }
  PeerHealth& health() { return health_; }
  ExpertCaller& caller() { return caller_; }

 private:
  struct Proof {
    enum State { kPending, kProven, kUnreachable } state = kPending;
    Deadline until{};
  };
  // mu_ held. A probe is the challenge sent when a ban ran out: its result ends or renews it.
  void StartProof(const Replica& replica, Deadline deadline, bool probe);
  void OnProof(const Replica& replica, ProofResult result, bool probe);

  const Clock& clock_;
  ExpertDirectory directory_;
  const SwarmOptions options_;
  PeerHealth health_;

  mutable std::mutex mu_;
  std::condition_variable proof_cv_;
  std::map<std::pair<std::string, std::string>, Proof> proofs_;  // (endpoint, peer id)
  std::map<std::string, Deadline> liars_;                        // peer id -> until

  ExpertCaller caller_;  // last: its destructor fails probes in flight, which report to health_
};

}  // namespace dmoe::gating

#endif  // DMOE_GATING_SWARM_H_
