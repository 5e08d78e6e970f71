#include "gating/peer_health.h"

#include <algorithm>

namespace dmoe::gating {

const std::string& PeerHealth::ResolveLocked(const std::string& peer) const {
  auto it = bound_.find(peer);
  return it == bound_.end() ? peer : it->second;
}

std::string PeerHealth::Resolve(const std::string& peer) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ResolveLocked(peer);
}

void PeerHealth::Bind(const std::string& endpoint, const std::string& peer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  bound_[endpoint] = peer_id;
  auto old = peers_.find(endpoint);
  if (old == peers_.end()) return;
  // What was learned under the endpoint's name now belongs to the key (the worse ban wins).
  PeerStats& p = peers_[peer_id];
  const PeerStats& e = old->second;
  if (p.successes == 0) p.latency_s = e.latency_s;
  p.successes += e.successes;
  p.failures += e.failures;
  p.consecutive_failures = std::max(p.consecutive_failures, e.consecutive_failures);
  p.bans += e.bans;
  p.probes += e.probes;
  if (e.banned_until > p.banned_until) {
    p.banned_until = e.banned_until;
    p.banned_at = e.banned_at;
  }
  p.probation = p.probation || e.probation;
  peers_.erase(old);
}

bool PeerHealth::Usable(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(ResolveLocked(name));
  return it == peers_.end() || (!it->second.probation && it->second.banned_until <= clock_.Now());
}

void PeerHealth::RecordSuccess(const std::string& name, double latency_s) {
  std::lock_guard<std::mutex> lock(mu_);
  PeerStats& p = peers_[ResolveLocked(name)];
  p.latency_s = p.successes == 0 ? latency_s
                                 : (1 - options_.latency_ewma_alpha) * p.latency_s +
                                       options_.latency_ewma_alpha * latency_s;
  ++p.successes;
  p.consecutive_failures = 0;
  p.banned_until = {};
  p.probation = false;
}

void PeerHealth::RecordFailure(const std::string& name, PeerFailure kind, Deadline round_started) {
  std::lock_guard<std::mutex> lock(mu_);
  PeerStats& p = peers_[ResolveLocked(name)];
  const int64_t strikes = std::max(1, options_.strikes_to_ban);
  ++p.failures;
  if (p.probation && round_started < p.banned_at) return;  // the current ban already covers it
  ++p.consecutive_failures;
  if (kind == PeerFailure::kUnreachable)
    p.consecutive_failures = std::max(p.consecutive_failures, strikes);
  if (p.consecutive_failures < strikes) return;
  const int shift = static_cast<int>(std::min<int64_t>(p.consecutive_failures - strikes, 20));
  auto ban = std::min(options_.ban_base * (int64_t{1} << shift), options_.ban_max);
  p.banned_at = clock_.Now();
  p.banned_until = p.banned_at + ban;
  p.probation = true;
  ++p.bans;
}

bool PeerHealth::StartProbe(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(ResolveLocked(name));
  if (it == peers_.end()) return false;
  PeerStats& p = it->second;
  if (!p.probation || p.probing || p.banned_until > clock_.Now()) return false;
  p.probing = true;
  ++p.probes;
  return true;
}

void PeerHealth::RecordProbe(const std::string& name, bool passed) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PeerStats& p = peers_[ResolveLocked(name)];
    p.probing = false;
    if (passed) {
      p.probation = false;
      return;
    }
  }
  RecordFailure(name, PeerFailure::kUnreachable);
}

PeerStats PeerHealth::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(ResolveLocked(name));
  return it == peers_.end() ? PeerStats{} : it->second;
}

std::map<std::string, PeerStats> PeerHealth::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peers_;
}

int PeerHealth::BannedNow() const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = clock_.Now();
  return static_cast<int>(std::count_if(peers_.begin(), peers_.end(), [&](const auto& p) {
    return p.second.probation || p.second.banned_until > now;
  }));
}

}  // namespace dmoe::gating
