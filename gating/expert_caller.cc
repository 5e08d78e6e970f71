#include "gating/expert_caller.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "core/request_auth.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {
namespace {

// "http://host:port" -> "ws://host:port/v1/ws".
std::string WsUrl(const std::string& endpoint) {
  std::string rest = endpoint;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  return "ws://" + rest + "/v1/ws";
}

}  // namespace

// One endpoint's shared connection and the calls waiting on it. All fields under mu.
struct ExpertCaller::Peer {
  struct Call {
    ExpertCaller::Callback done;
    MonotonicClock::time_point sent_at;
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

ExpertCaller::ExpertCaller(const Clock& clock, CallerOptions options)
    : clock_(clock),
      options_(std::move(options)),
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
  RequestSignature sig =
      SignRequest(*options_.identity, peer_id, "GET", "/v1/ws", {}, clock_.NowUnixMs());
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
  Peer::Call call{std::move(done), clock_.Now(), false, {}};
  if (auto local = options_.local.find(endpoint); local != options_.local.end()) {
    call.sent = true;
    peer->calls[id] = std::move(call);
    lock.unlock();
    std::weak_ptr<Peer> weak = peer;
    const Clock* clock = &clock_;
    local->second(std::move(blob), [weak, clock, id](net::Bytes answer) {
      auto peer = weak.lock();
      if (!peer) return;
      std::unique_lock<std::mutex> lock(peer->mu);
      auto node = peer->calls.extract(id);
      lock.unlock();
      if (!node) return;  // given up on (Forget), or failed at destruction
      double latency = std::chrono::duration<double>(clock->Now() - node.mapped().sent_at).count();
      node.mapped().done({Status::Ok(), std::move(answer), latency});
    });
    return;
  }
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
  const Clock* clock = &clock_;  // outlives the caller, so every callback
  handlers.on_message = [weak, clock](const std::shared_ptr<net::WsConnection>&,
                                      net::Bytes message) {
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
    double latency = std::chrono::duration<double>(clock->Now() - node.mapped().sent_at).count();
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
  ws_.GetShared(WsUrl(endpoint), UpgradeHeaders(endpoint), std::move(handlers),
                RealTimeBound(clock_, deadline),
                [weak, clock](Result<std::shared_ptr<net::WsConnection>> conn) {
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
                      call.sent_at = clock->Now();
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
      "GET", url + "/v1/health", {}, {}, RealTimeBound(clock_, deadline),
      [done = std::move(done)](Result<net::Response> r) { done(r.ok() && r->status == 200); });
}

void ExpertCaller::Prove(const std::string& endpoint, const PublicKey& key, Deadline deadline,
                         std::function<void(ProofResult)> done) {
  std::string url = endpoint;
  while (!url.empty() && url.back() == '/') url.pop_back();
  const std::string challenge = NewChallengeHex();
  http_.Request(
      "GET", url + "/v1/health?challenge=" + challenge, {}, {}, RealTimeBound(clock_, deadline),
      [this, endpoint, key, challenge, done = std::move(done)](Result<net::Response> r) {
        if (!r.ok()) {
          // An error answer is an answer: only a transport failure leaves the question
          // open.
          const Code code = r.status().code();
          const bool answered = code != Code::kUnavailable && code != Code::kDeadlineExceeded;
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

}  // namespace dmoe::gating
