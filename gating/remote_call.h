// Talking to expert servers: one request blob out, one answer blob back, over a pooled WebSocket
// per endpoint (PROTOCOL section 4), and the health of every peer (latency, failures, bans).
//
// Torch-free: callers encode and decode the safetensors blobs (gating/remote_moe.cc). Answers are
// matched to requests by the `id` of their metadata, so any number of requests share one
// connection.
#ifndef DMOE_GATING_REMOTE_CALL_H_
#define DMOE_GATING_REMOTE_CALL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/status.h"
#include "gating/beam_search.h"
#include "net/http_client.h"

namespace dmoe::gating {

using Deadline = std::chrono::steady_clock::time_point;

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

// Per-peer health. A peer is named by its peer id once an endpoint has been bound to it (Bind:
// the endpoint proved that it holds the peer's key), else by its endpoint; every method takes
// either name and resolves a bound endpoint to its peer id. So bans follow the key: a server
// banned at one endpoint is still banned when it comes back at another. Thread-safe.
class PeerHealth {
 public:
  explicit PeerHealth(HealthOptions options = {}) : options_(options) {}

  // From now on `endpoint` names the peer `peer_id` (replacing an earlier binding of it). What
  // the endpoint's name had learned before is merged into the peer's (the worse of the two bans).
  void Bind(const std::string& endpoint, const std::string& peer_id);
  // The name `peer` resolves to: its peer id when it is a bound endpoint, else itself.
  std::string Resolve(const std::string& peer) const;

  // False while the endpoint is banned or on probation.
  bool Usable(const std::string& endpoint) const;
  // Clears the ban, the probation and the consecutive failures; updates the latency average.
  void RecordSuccess(const std::string& endpoint, double latency_s);
  // Counts a round in which every call to the peer failed; bans it per HealthOptions. A round that
  // started before the peer's current ban was applied (`round_started`) saw the same outage that
  // ban answers: it is counted but does not lengthen the ban, so the steps a pipelined trainer had
  // in flight when a server went down do not ban it for 2^N seconds.
  void RecordFailure(const std::string& endpoint, PeerFailure kind = PeerFailure::kStrike,
                     Deadline round_started = Deadline::max());
  // True (once) when the peer's ban has run out and a probe should go: the caller sends it and
  // reports with RecordProbe.
  bool StartProbe(const std::string& endpoint);
  // A passed probe ends the probation (the failure count stays, so the next failed round bans
  // again at once, for longer); a failed one counts as a failed round.
  void RecordProbe(const std::string& endpoint, bool passed);

  PeerStats Get(const std::string& endpoint) const;
  std::map<std::string, PeerStats> Snapshot() const;
  // Peers banned or on probation right now (not Usable).
  int BannedNow() const;

 private:
  const std::string& ResolveLocked(const std::string& peer) const;

  HealthOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, PeerStats> peers_;
  std::map<std::string, std::string> bound_;  // endpoint -> peer id
};

// The outcome of one call: the answer blob (OK, possibly a server-side error decoded later), or
// why none came.
struct CallOutcome {
  Status status;
  net::Bytes blob;
  double latency_s = 0;
};

// What an endpoint's answer to a challenge showed.
enum class ProofResult {
  kProven,       // it signed the challenge with the expected key
  kRefused,      // it answered, but without a valid proof for that key: the record lies
  kUnreachable,  // no answer (connection refused, timeout, ...): nothing is known
};

struct CallerOptions {
  // Signs WebSocket upgrades (PROTOCOL section 4) so that servers with --trainer-keys accept
  // backward; none = unsigned.
  std::optional<Identity> identity;
  int io_threads = 1;
  uint64_t max_message_bytes = 64ull << 20;
  // The process's buffer pool (net/buffer_pool.h), which must outlive the caller; null: the
  // caller keeps its own.
  net::BufferPool* buffer_pool = nullptr;
};

// Sends request blobs to expert servers over one shared WebSocket per endpoint. Thread-safe.
// Callbacks run on an io thread and must not block (they only hand the blob over).
class ExpertCaller {
 public:
  using Callback = std::function<void(CallOutcome)>;

  explicit ExpertCaller(CallerOptions options = {});
  // Fails calls in flight (kUnavailable) and closes connections. Not from an io thread.
  ~ExpertCaller();
  ExpertCaller(const ExpertCaller&) = delete;
  ExpertCaller& operator=(const ExpertCaller&) = delete;

  // A fresh request id, unique within this caller.
  std::string NextId();
  // Sends `blob` (whose metadata carries `id`) to `endpoint` ("http://host:port"), connecting
  // first when needed (bounded by `deadline`). `done` runs exactly once, unless Forget(endpoint,
  // id) came first: with the answer, or kUnavailable when the connection failed or closed.
  // Deadlines of the answer itself are the caller's to enforce (see Forget).
  void Send(const std::string& endpoint, const std::string& id, net::Bytes blob, Deadline deadline,
            Callback done);
  // Drops a call the caller stopped waiting for; a late answer is then discarded.
  void Forget(const std::string& endpoint, const std::string& id);
  // GET endpoint/v1/health; `done(true)` when it answers 200 by `deadline`. Not on the WebSocket,
  // whose queue may still hold calls the peer never answered.
  void Probe(const std::string& endpoint, Deadline deadline, std::function<void(bool)> done);
  // GET endpoint/v1/health?challenge=<fresh 32 random bytes>: whether the server there proves
  // that it holds `key` (PROTOCOL section 4, "Endpoints prove their key"). The answer is read
  // with a 16 KiB body limit. A proven endpoint is remembered as `key`'s (SetPeerId).
  void Prove(const std::string& endpoint, const PublicKey& key, Deadline deadline,
             std::function<void(ProofResult)> done);
  // The peer id whose server listens at `endpoint`, proven: WebSocket upgrades to it are signed
  // for that peer id (dmoe-req-v2). Upgrades to an endpoint of no known peer id are not signed.
  void SetPeerId(const std::string& endpoint, const std::string& peer_id);
  // Where request blobs are taken from (and answers given back to once decoded): the pool the
  // WebSocket connections read and write with. Any thread.
  net::BufferPool& buffer_pool() { return ws_.buffer_pool(); }

 private:
  struct Peer;
  std::shared_ptr<Peer> PeerFor(const std::string& endpoint);
  net::Headers UpgradeHeaders(const std::string& endpoint);

  CallerOptions options_;
  net::IoContext io_;
  net::WsClient ws_;
  net::HttpClient http_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Peer>> peers_;
  std::map<std::string, std::string> peer_ids_;  // endpoint -> proven peer id
};

// Collects the outcomes of a set of calls for one waiting thread. Thread-safe.
class CallBatch : public std::enable_shared_from_this<CallBatch> {
 public:
  explicit CallBatch(size_t calls) : outcomes_(calls) {}
  // A callback that stores outcome `index` and wakes the waiter; it keeps the batch alive, so a
  // late answer is harmless. The batch must be owned by a shared_ptr.
  ExpertCaller::Callback Completion(size_t index);
  // Waits until a completion not yet taken arrives or `until` passes; moves the newly completed
  // (index, outcome) pairs out. Empty on timeout.
  std::vector<std::pair<size_t, CallOutcome>> WaitNew(Deadline until);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<CallOutcome>> outcomes_;
  std::vector<size_t> fresh_;
};

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

// What the layers of one trainer share: the DHT cache, the connections, the peers' health and
// which endpoints proved which keys. Thread-safe.
//
// Trust: a replica (an `expert/<uid>` record) is used only after its endpoint answered a fresh
// challenge with a proof by the record's publisher key (cached for proof_ttl); an endpoint that
// answers without one makes its publisher a liar for liar_ttl; one that does not answer counts
// as an unreachable peer (banned at once, probed by a new challenge when the ban runs out).
// Health, bans and the choice among replicas go by publisher key, never by the record's expiry.
class Swarm {
 public:
  // `dht` (a client node) must outlive the swarm.
  Swarm(dht::Dht* dht, SwarmOptions options = {})
      : directory_(dht, options.directory),
        options_(std::move(options)),
        health_(options_.health),
        caller_(options_.caller) {}
  // With a stand-in for the DHT (tests).
  Swarm(ExpertDirectory::FetchFn fetch, SwarmOptions options = {})
      : directory_(std::move(fetch), options.directory),
        options_(std::move(options)),
        health_(options_.health),
        caller_(options_.caller) {}
  ~Swarm();

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

#endif  // DMOE_GATING_REMOTE_CALL_H_
