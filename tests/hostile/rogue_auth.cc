#include "tests/hostile/rogue_auth.h"

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/request_auth.h"

namespace dmoe::hostile {

RogueEndpoint::RogueEndpoint(ProofMode mode) : mode_(mode) {}

RogueEndpoint::~RogueEndpoint() {
  if (http_) http_->Stop(std::chrono::seconds(1));
}

Result<std::unique_ptr<RogueEndpoint>> RogueEndpoint::Start(ProofMode mode) {
  std::unique_ptr<RogueEndpoint> rogue(new RogueEndpoint(mode));
  net::HttpServerOptions options;
  options.host = "127.0.0.1";
  options.threads = 1;
  rogue->http_ = std::make_unique<net::HttpServer>(options);
  RogueEndpoint* self = rogue.get();
  self->http_->Handle("GET", "/v1/health", [self](net::Request req, net::Responder respond) {
    nlohmann::json body = {{"status", "ok"}, {"peer_id", self->identity_.peer_id()}};
    if (std::optional<std::string_view> found = req.QueryValue("challenge")) {
      ++self->challenges_;
      const std::string_view challenge = *found;
      switch (self->mode_) {
        case ProofMode::kOwnKey:
          body["public_key"] = self->identity_.public_key_hex();
          body["proof"] = SignProof(self->identity_, challenge);
          break;
        case ProofMode::kOtherKey:
          body["public_key"] = self->other_.public_key_hex();
          body["proof"] = SignProof(self->other_, challenge);
          break;
        case ProofMode::kNone:
          break;
      }
    }
    respond(net::Response::Json(200, body.dump()));
  });
  net::WsHandlers handlers;
  handlers.on_message = [self](const std::shared_ptr<net::WsConnection>&, net::Bytes) {
    ++self->messages_;  // never answered: it only collects what it is sent
  };
  self->http_->HandleWebSocket("/v1/ws", std::move(handlers), [self](const net::RequestHead& head) {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->upgrades_.push_back(head);
    return Status::Ok();
  });
  DMOE_RETURN_IF_ERROR(self->http_->Start());
  return rogue;
}

std::string RogueEndpoint::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(http_->port());
}

std::vector<net::RequestHead> RogueEndpoint::upgrades() const {
  std::lock_guard<std::mutex> lock(mu_);
  return upgrades_;
}

Result<std::unique_ptr<Stranger>> Stranger::Start(const std::string& bootstrap) {
  std::unique_ptr<Stranger> stranger(new Stranger());
  dht::DhtOptions options;
  options.clock = &RealClock::Instance();
  options.listen = "127.0.0.1:0";
  options.bootstrap = {bootstrap};
  options.identity = stranger->identity_;
  DMOE_ASSIGN_OR_RETURN(stranger->dht_, dht::Dht::Start(std::move(options)));
  DMOE_RETURN_IF_ERROR(stranger->dht_->WaitBootstrapped(std::chrono::seconds(10)));
  return stranger;
}

Stranger::~Stranger() {
  if (dht_) dht_->Stop();
}

Status Stranger::AnnounceExpert(const std::string& uid, const std::string& endpoint,
                                std::chrono::seconds ttl) {
  nlohmann::json value = {{"endpoint", endpoint}, {"step", 0}, {"load", 0}, {"type", "ffn"}};
  return Put("expert/" + uid, identity_.peer_id(), value.dump(), ttl);
}

Status Stranger::Put(const std::string& key, const std::string& subkey, const std::string& value,
                     std::chrono::seconds ttl) {
  Result<int> stored = dht_->PutBlocking(key, subkey, value, ttl);
  if (!stored.ok()) return stored.status();
  if (*stored == 0) return UnavailableError("no DHT node stored " + key + "/" + subkey);
  return Status::Ok();
}

}  // namespace dmoe::hostile
