#include "gating/remote_call.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include <nlohmann/json.hpp>
#include "core/clock.h"
#include "core/request_auth.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {
namespace {

using SteadyClock = std::chrono::steady_clock;

// "http://host:port" -> "ws://host:port/v1/ws".
std::string WsUrl(const std::string& endpoint) {
  std::string rest = endpoint;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  return "ws://" + rest + "/v1/ws";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PeerHealth

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
  return it == peers_.end() ||
         (!it->second.probation && it->second.banned_until <= SteadyClock::now());
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
  p.banned_at = SteadyClock::now();
  p.banned_until = p.banned_at + ban;
  p.probation = true;
  ++p.bans;
}

bool PeerHealth::StartProbe(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(ResolveLocked(name));
  if (it == peers_.end()) return false;
  PeerStats& p = it->second;
  if (!p.probation || p.probing || p.banned_until > SteadyClock::now()) return false;
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
  const auto now = SteadyClock::now();
  return static_cast<int>(std::count_if(peers_.begin(), peers_.end(), [&](const auto& p) {
    return p.second.probation || p.second.banned_until > now;
  }));
}

// ---------------------------------------------------------------------------------------------
// ExpertCaller

// One endpoint's shared connection and the calls waiting on it. All fields under mu.
struct ExpertCaller::Peer {
  struct Call {
    ExpertCaller::Callback done;
    SteadyClock::time_point sent_at;
    bool sent = false;
    net::Bytes blob;  // until sent
  };
  std::mutex mu;
  std::shared_ptr<net::WsConnection> conn;
  bool connecting = false;
  std::map<std::string, Call> calls;

  // Takes the calls matching `pred` out, to be failed outside the lock.
  std::vector<Call> TakeIf(const std::function<bool(const Call&)>& pred) {
    std::vector<Call> out;
    for (auto it = calls.begin(); it != calls.end();) {
      if (pred(it->second)) {
        out.push_back(std::move(it->second));
        it = calls.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
};

ExpertCaller::ExpertCaller(CallerOptions options)
    : options_(std::move(options)),
      io_(std::max(1, options_.io_threads)),
      ws_(net::WsClientOptions{.threads = 1,
                               .max_message_bytes = options_.max_message_bytes,
                               .max_queued_messages = 1024,
                               .idle_timeout = std::chrono::milliseconds(300'000),
                               .buffer_pool = options_.buffer_pool},
          &io_),
      // Probes and proofs read small JSON answers only: a peer cannot make us buffer more.
      http_(net::HttpClientOptions{.max_response_body_bytes = 16 << 10,
                                   .buffer_pool = options_.buffer_pool},
            &io_) {}

ExpertCaller::~ExpertCaller() {
  std::map<std::string, std::shared_ptr<Peer>> peers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    peers.swap(peers_);
  }
  for (auto& [endpoint, peer] : peers) {
    std::vector<Peer::Call> calls;
    {
      std::lock_guard<std::mutex> lock(peer->mu);
      calls = peer->TakeIf([](const Peer::Call&) { return true; });
      if (peer->conn) peer->conn->Close();
    }
    for (auto& c : calls) c.done({UnavailableError("the expert caller is shutting down"), {}, 0});
  }
}

std::string ExpertCaller::NextId() { return std::to_string(next_id_.fetch_add(1)); }

std::shared_ptr<ExpertCaller::Peer> ExpertCaller::PeerFor(const std::string& endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& peer = peers_[endpoint];
  if (!peer) peer = std::make_shared<Peer>();
  return peer;
}

void ExpertCaller::SetPeerId(const std::string& endpoint, const std::string& peer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  peer_ids_[endpoint] = peer_id;
}

net::Headers ExpertCaller::UpgradeHeaders(const std::string& endpoint) {
  net::Headers headers;
  if (!options_.identity) return headers;
  std::string peer_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peer_ids_.find(endpoint);
    if (it == peer_ids_.end()) return headers;  // signed only for a server that proved its key
    peer_id = it->second;
  }
  RequestSignature sig = SignRequest(*options_.identity, peer_id, "GET", "/v1/ws", {},
                                     RealClock::Instance().NowUnixMs());
  headers.Set(kKeyHeader, sig.key_hex);
  headers.Set(kTimestampHeader, sig.timestamp_ms);
  headers.Set(kNonceHeader, sig.nonce_hex);
  headers.Set(kSignatureHeader, sig.signature_hex);
  return headers;
}

void ExpertCaller::Send(const std::string& endpoint, const std::string& id, net::Bytes blob,
                        Deadline deadline, Callback done) {
  std::shared_ptr<Peer> peer = PeerFor(endpoint);
  std::unique_lock<std::mutex> lock(peer->mu);
  Peer::Call call{std::move(done), SteadyClock::now(), false, {}};
  if (peer->conn && peer->conn->is_open()) {
    call.sent = true;
    peer->calls[id] = std::move(call);
    Status sent = peer->conn->Send(std::move(blob));
    if (!sent.ok()) {
      auto node = peer->calls.extract(id);
      lock.unlock();
      if (node) node.mapped().done({sent, {}, 0});
    }
    return;
  }
  call.blob = std::move(blob);
  peer->calls[id] = std::move(call);
  if (peer->connecting) return;
  peer->connecting = true;
  lock.unlock();

  std::weak_ptr<Peer> weak = peer;
  net::WsHandlers handlers;
  handlers.on_message = [weak](const std::shared_ptr<net::WsConnection>&, net::Bytes message) {
    auto peer = weak.lock();
    if (!peer) return;
    // Only the header is parsed here (no copy of the data); the waiting thread decodes tensors.
    Result<safetensors::Decoded> decoded = safetensors::Decode(message);
    if (!decoded.ok()) return;
    auto it = decoded->metadata.find("id");
    if (it == decoded->metadata.end()) return;
    std::unique_lock<std::mutex> lock(peer->mu);
    auto node = peer->calls.extract(it->second);
    lock.unlock();
    if (!node) return;  // late answer to a call given up on
    double latency =
        std::chrono::duration<double>(SteadyClock::now() - node.mapped().sent_at).count();
    node.mapped().done({Status::Ok(), std::move(message), latency});
  };
  handlers.on_close = [weak](const std::shared_ptr<net::WsConnection>& conn, const Status& why) {
    auto peer = weak.lock();
    if (!peer) return;
    std::vector<Peer::Call> failed;
    {
      std::lock_guard<std::mutex> lock(peer->mu);
      if (peer->conn == conn) peer->conn.reset();
      failed = peer->TakeIf([](const Peer::Call& c) { return c.sent; });
    }
    Status status = why.ok() ? UnavailableError("the expert server closed the connection")
                             : UnavailableError("connection lost: " + why.message());
    for (auto& c : failed) c.done({status, {}, 0});
  };
  ws_.GetShared(WsUrl(endpoint), UpgradeHeaders(endpoint), std::move(handlers), deadline,
                [weak](Result<std::shared_ptr<net::WsConnection>> conn) {
                  auto peer = weak.lock();
                  if (!peer) return;
                  std::vector<Peer::Call> failed;
                  {
                    std::lock_guard<std::mutex> lock(peer->mu);
                    peer->connecting = false;
                    if (conn.ok()) peer->conn = *conn;
                    for (auto& [id, call] : peer->calls) {
                      if (call.sent) continue;
                      if (!conn.ok()) continue;
                      call.sent = true;
                      call.sent_at = SteadyClock::now();
                      Status s = (*conn)->Send(std::move(call.blob));
                      if (!s.ok()) call.blob.clear();  // failed below through `sent` + closed
                    }
                    if (!conn.ok()) {
                      failed = peer->TakeIf([](const Peer::Call& c) { return !c.sent; });
                    }
                  }
                  for (auto& c : failed) c.done({conn.status(), {}, 0});
                });
}

void ExpertCaller::Forget(const std::string& endpoint, const std::string& id) {
  std::shared_ptr<Peer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(endpoint);
    if (it == peers_.end()) return;
    peer = it->second;
  }
  std::lock_guard<std::mutex> lock(peer->mu);
  peer->calls.erase(id);
}

void ExpertCaller::Probe(const std::string& endpoint, Deadline deadline,
                         std::function<void(bool)> done) {
  std::string url = endpoint;
  while (!url.empty() && url.back() == '/') url.pop_back();
  http_.Request(
      "GET", url + "/v1/health", {}, {}, deadline,
      [done = std::move(done)](Result<net::Response> r) { done(r.ok() && r->status == 200); });
}

void ExpertCaller::Prove(const std::string& endpoint, const PublicKey& key, Deadline deadline,
                         std::function<void(ProofResult)> done) {
  std::string url = endpoint;
  while (!url.empty() && url.back() == '/') url.pop_back();
  const std::string challenge = NewChallengeHex();
  http_.Request("GET", url + "/v1/health?challenge=" + challenge, {}, {}, deadline,
                [this, endpoint, key, challenge, done = std::move(done)](Result<net::Response> r) {
                  if (!r.ok()) {
                    // An error answer is an answer: only a transport failure leaves the question
                    // open.
                    const Code code = r.status().code();
                    const bool answered =
                        code != Code::kUnavailable && code != Code::kDeadlineExceeded;
                    return done(answered ? ProofResult::kRefused : ProofResult::kUnreachable);
                  }
                  auto j = nlohmann::json::parse(r->body_view(), nullptr, false);
                  const bool proven = r->status == 200 && j.is_object() && j.contains("proof") &&
                                      j["proof"].is_string() &&
                                      VerifyProof(key, challenge, j["proof"].get<std::string>());
                  if (proven) SetPeerId(endpoint, PeerIdOf(key));
                  done(proven ? ProofResult::kProven : ProofResult::kRefused);
                });
}

// ---------------------------------------------------------------------------------------------
// Swarm

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
  return it != liars_.end() && it->second > SteadyClock::now();
}

Usability Swarm::Check(const Replica& replica) {
  if (options_.server_keys && options_.server_keys->count(replica.publisher) == 0) {
    return Usability::kUnusable;
  }
  const auto now = SteadyClock::now();
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
  const auto now = SteadyClock::now();
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
  const auto now = SteadyClock::now();
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
    if (it != proofs_.end() && it->second.state == Proof::kPending) continue;    // already asked
    if (it != proofs_.end() && it->second.until > SteadyClock::now()) continue;  // decided
    if (liars_.count(r.peer_id)) continue;
    StartProof(r, until, /*probe=*/false);
  }
  proof_cv_.wait_until(lock, until, [&] {
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
    caller_.Probe(endpoint, SteadyClock::now() + options_.health.probe_timeout,
                  [this, endpoint](bool passed) { health_.RecordProbe(endpoint, passed); });
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// CallBatch

ExpertCaller::Callback CallBatch::Completion(size_t index) {
  return [self = shared_from_this(), index](CallOutcome outcome) {
    std::lock_guard<std::mutex> lock(self->mu_);
    if (self->outcomes_[index].has_value()) return;
    self->outcomes_[index] = std::move(outcome);
    self->fresh_.push_back(index);
    self->cv_.notify_all();
  };
}

std::vector<std::pair<size_t, CallOutcome>> CallBatch::WaitNew(Deadline until) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, until, [&] { return !fresh_.empty(); });
  std::vector<std::pair<size_t, CallOutcome>> out;
  for (size_t i : fresh_) out.emplace_back(i, std::move(*outcomes_[i]));
  fresh_.clear();
  return out;
}

}  // namespace dmoe::gating
