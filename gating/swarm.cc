#include "gating/swarm.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace dmoe::gating {

Swarm::Swarm(dht::Dht* dht, const Clock& clock, SwarmOptions options)
    : clock_(clock),
      directory_(dht, clock, options.directory),
      options_(std::move(options)),
      health_(clock, options_.health),
      caller_(clock, options_.caller) {}

Swarm::Swarm(ExpertDirectory::FetchFn fetch, const Clock& clock, SwarmOptions options)
    : clock_(clock),
      directory_(std::move(fetch), clock, options.directory),
      options_(std::move(options)),
      health_(clock, options_.health),
      caller_(clock, options_.caller) {}

Swarm::~Swarm() = default;

ReplicaPolicy Swarm::Policy() {
  ReplicaPolicy policy;
  policy.check = [this](const Replica& r) { return Check(r); };
  policy.resolve = [this](const std::vector<Replica>& r, Deadline d) { Resolve(r, d); };
  policy.cost = [this](const Replica& r) { return Cost(r); };
  if (options_.server_keys) {
    policy.publisher_allowed = [this](const PublicKey& key) {
      return options_.server_keys->count(key) > 0;
    };
  }
  return policy;
}

bool Swarm::Liar(const std::string& peer_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = liars_.find(peer_id);
  return it != liars_.end() && it->second > clock_.Now();
}

Usability Swarm::Check(const Replica& replica) {
  if (options_.server_keys && options_.server_keys->count(replica.publisher) == 0) {
    return Usability::kUnusable;
  }
  const auto now = clock_.Now();
  std::unique_lock<std::mutex> lock(mu_);
  auto liar = liars_.find(replica.peer_id);
  if (liar != liars_.end()) {
    if (liar->second > now) return Usability::kUnusable;
    liars_.erase(liar);
  }
  auto it = proofs_.find({replica.endpoint, replica.peer_id});
  const bool proven =
      it != proofs_.end() && it->second.state == Proof::kProven && it->second.until > now;
  if (!health_.Usable(replica.peer_id)) {
    // Banned, or on probation: when the ban ran out, a new challenge is the probe.
    if (health_.StartProbe(replica.peer_id)) {
      spdlog::debug("gating: probing {} at {} after its ban", replica.peer_id, replica.endpoint);
      proofs_.erase({replica.endpoint, replica.peer_id});
      StartProof(replica, now + options_.health.probe_timeout, /*probe=*/true);
    }
    return Usability::kUnusable;
  }
  if (proven) return Usability::kUsable;
  if (it != proofs_.end() && it->second.state == Proof::kPending) return Usability::kPending;
  if (it != proofs_.end() && it->second.state == Proof::kUnreachable && it->second.until > now) {
    return Usability::kUnusable;
  }
  return Usability::kPending;  // never asked, or the proof ran out: Resolve asks
}

void Swarm::StartProof(const Replica& replica, Deadline deadline, bool probe) {
  proofs_[{replica.endpoint, replica.peer_id}] = Proof{Proof::kPending, {}};
  caller_.Prove(replica.endpoint, replica.publisher, deadline,
                [this, replica, probe](ProofResult result) { OnProof(replica, result, probe); });
}

void Swarm::OnProof(const Replica& replica, ProofResult result, bool probe) {
  // Health first: a search woken by the decision below must find the peer's health up to date.
  if (result == ProofResult::kProven) health_.Bind(replica.endpoint, replica.peer_id);
  if (result == ProofResult::kRefused) {
    spdlog::warn("gating: {} does not prove the key {} that announced it; ignoring that publisher",
                 replica.endpoint, replica.peer_id);
  }
  if (probe) {
    health_.RecordProbe(replica.peer_id, result == ProofResult::kProven);
  } else if (result == ProofResult::kUnreachable) {
    health_.RecordFailure(replica.peer_id, PeerFailure::kUnreachable);
  }
  const auto now = clock_.Now();
  std::lock_guard<std::mutex> lock(mu_);
  Proof& p = proofs_[{replica.endpoint, replica.peer_id}];
  switch (result) {
    case ProofResult::kProven:
      p = Proof{Proof::kProven, now + options_.proof_ttl};
      break;
    case ProofResult::kRefused:
      proofs_.erase({replica.endpoint, replica.peer_id});
      liars_[replica.peer_id] = now + options_.liar_ttl;
      break;
    case ProofResult::kUnreachable:
      p = Proof{Proof::kUnreachable, now + options_.directory.negative_cache_age};
      break;
  }
  proof_cv_.notify_all();
}

void Swarm::Resolve(const std::vector<Replica>& replicas, Deadline deadline) {
  const auto now = clock_.Now();
  const auto until = std::min(deadline, now + options_.proof_timeout);
  std::unique_lock<std::mutex> lock(mu_);
  // Records name endpoints and keys at the publishers' will: forget what ran out, now and then.
  if (proofs_.size() > 4096) {
    std::erase_if(proofs_, [&](const auto& p) {
      return p.second.state != Proof::kPending && p.second.until <= now;
    });
  }
  if (liars_.size() > 4096) {
    std::erase_if(liars_, [&](const auto& l) { return l.second <= now; });
  }
  for (const Replica& r : replicas) {
    auto it = proofs_.find({r.endpoint, r.peer_id});
    if (it != proofs_.end() && it->second.state == Proof::kPending) continue;  // already asked
    if (it != proofs_.end() && it->second.until > clock_.Now()) continue;      // decided
    if (liars_.count(r.peer_id)) continue;
    StartProof(r, until, /*probe=*/false);
  }
  proof_cv_.wait_until(lock, RealTimeBound(clock_, until), [&] {
    for (const Replica& r : replicas) {
      auto it = proofs_.find({r.endpoint, r.peer_id});
      if (it != proofs_.end() && it->second.state == Proof::kPending) return false;
    }
    return true;
  });
}

double Swarm::Cost(const Replica& replica) const {
  PeerStats p = health_.Get(replica.peer_id);
  return (p.successes > 0 ? p.latency_s : 0.0) + static_cast<double>(p.consecutive_failures);
}

bool Swarm::Usable(const std::string& endpoint) {
  if (health_.Usable(endpoint)) return true;
  if (health_.StartProbe(endpoint)) {
    spdlog::debug("gating: probing {} after its ban", endpoint);
    caller_.Probe(endpoint, clock_.Now() + options_.health.probe_timeout,
                  [this, endpoint](bool passed) { health_.RecordProbe(endpoint, passed); });
  }
  return false;
}

}  // namespace dmoe::gating
