// The health of every expert server a trainer calls: latency, failed rounds, bans with backoff,
// and the probe that ends a ban (docs/protocol.md section 7).
//
// A peer is named by its peer id once an endpoint has been bound to it (Bind: the endpoint proved
// that it holds the peer's key), else by its endpoint. Every method takes either name and
// resolves a bound endpoint to its peer id, so bans follow the key: a server banned at one
// endpoint is still banned when it comes back at another.
//
// Time: bans are measured on the Clock given at construction (a FakeClock in tests), and every
// Deadline passed in or read out is on that clock. Nothing here blocks or does I/O; sending the
// probe is the caller's (Swarm).
//
// Threads: every method may be called from any thread; one mutex guards the table.
#ifndef DMOE_GATING_PEER_HEALTH_H_
#define DMOE_GATING_PEER_HEALTH_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "core/clock.h"

namespace dmoe::gating {

struct HealthOptions {
  // A peer is banned once `strikes_to_ban` dispatch rounds in a row brought nothing but failures
  // from it (error answers, timeouts, anomalous answers): one late or failed call among good ones,
  // or one bad round, is noise on a loaded swarm, not a reason to stop asking a server. A peer that
  // cannot be reached at all (connection refused or lost) is banned at once.
  int strikes_to_ban = 3;
  // The first ban lasts ban_base, doubling with each further failed round up to ban_max; a success
  // clears it.
  std::chrono::milliseconds ban_base{1'000};
  std::chrono::milliseconds ban_max{60'000};
  // When a ban runs out the peer is on probation: it gets no calls until a cheap probe (GET
  // /v1/health) answers within probe_timeout, so a peer that is still down costs no round its
  // timeout again. A failed probe bans it again, for twice as long.
  std::chrono::milliseconds probe_timeout{2'000};
  double latency_ewma_alpha = 0.2;
};

// What a round of calls to one peer ended in, when none of them succeeded.
enum class PeerFailure {
  kStrike,       // it answered with errors or anomalies, or too late (after timeout_after_k_min)
  kUnreachable,  // no connection to it, or no answer within the round's whole deadline
};

struct PeerStats {
  double latency_s = 0;  // EWMA over successful calls; 0 before the first
  int64_t successes = 0;
  int64_t failures = 0;              // rounds that brought only failures
  int64_t consecutive_failures = 0;  // such rounds since the last success
  int64_t bans = 0;                  // times a ban was applied
  int64_t probes = 0;                // probes sent after bans ran out
  Deadline banned_until{};
  Deadline banned_at{};    // when the current ban was applied
  bool probation = false;  // banned since the last success: a probe must pass before calls
  bool probing = false;    // a probe is out
};

class PeerHealth {
 public:
  // `clock` must outlive the table.
  explicit PeerHealth(const Clock& clock, HealthOptions options = {})
      : clock_(clock), options_(options) {}

  // From now on `endpoint` names the peer `peer_id` (replacing an earlier binding of it). What
  // the endpoint's name had learned before is merged into the peer's (the worse of the two bans).
  void Bind(const std::string& endpoint, const std::string& peer_id);
  // The name `peer` resolves to: its peer id when it is a bound endpoint, else itself.
  std::string Resolve(const std::string& peer) const;

  // False while the peer is banned or on probation.
  bool Usable(const std::string& peer) const;
  // Clears the ban, the probation and the consecutive failures; updates the latency average.
  void RecordSuccess(const std::string& peer, double latency_s);
  // Counts a round in which every call to the peer failed; bans it per HealthOptions. A round that
  // started before the peer's current ban was applied (`round_started`) saw the same outage that
  // ban answers: it is counted but does not lengthen the ban, so the steps a pipelined trainer had
  // in flight when a server went down do not ban it for 2^N seconds.
  void RecordFailure(const std::string& peer, PeerFailure kind = PeerFailure::kStrike,
                     Deadline round_started = Deadline::max());
  // True (once) when the peer's ban has run out and a probe should go: the caller sends it and
  // reports with RecordProbe.
  bool StartProbe(const std::string& peer);
  // A passed probe ends the probation (the failure count stays, so the next failed round bans
  // again at once, for longer); a failed one counts as a failed round.
  void RecordProbe(const std::string& peer, bool passed);

  // What is known of the peer (all zero for one never seen).
  PeerStats Get(const std::string& peer) const;
  // Every peer by the name it is kept under (peer id, or endpoint when unbound).
  std::map<std::string, PeerStats> Snapshot() const;
  // Peers banned or on probation right now (not Usable).
  int BannedNow() const;

 private:
  const std::string& ResolveLocked(const std::string& peer) const;

  const Clock& clock_;
  HealthOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, PeerStats> peers_;
  std::map<std::string, std::string> bound_;  // endpoint -> peer id
};

}  // namespace dmoe::gating

#endif  // DMOE_GATING_PEER_HEALTH_H_
