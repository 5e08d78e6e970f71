// Rogue peers for the authentication part of the hostile-peers suite (issue 12), built from our own
// net and dht code with bad behaviour switched on. Test helpers only: never linked into a binary
// that ships.
//
//  - RogueEndpoint: an HTTP + WebSocket listener that poses as an expert server. It answers
//    GET /v1/health?challenge= with a proof by its own key, by another key, or none, and records
//    every WebSocket upgrade it is sent (headers included), so a test can replay a signed upgrade
//    elsewhere, as a server that turned hostile would.
//  - Stranger: a DHT node with its own key that publishes whatever records it likes (expert
//    records naming someone else's endpoint, long TTLs, prefix records for coordinates nobody
//    serves).
#ifndef DMOE_TESTS_HOSTILE_ROGUE_AUTH_H_
#define DMOE_TESTS_HOSTILE_ROGUE_AUTH_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/status.h"
#include "dht/dht.h"
#include "net/http_message.h"
#include "net/http_server.h"

namespace dmoe::hostile {

class RogueEndpoint {
 public:
  enum class ProofMode {
    kOwnKey,    // a valid proof of its own key (it is what it claims, but records what it gets)
    kOtherKey,  // a proof signed by a key other than the one the record names
    kNone,      // health answers, without any proof
  };
  // Listens on 127.0.0.1:0.
  static Result<std::unique_ptr<RogueEndpoint>> Start(ProofMode mode);
  ~RogueEndpoint();

  std::string endpoint() const;  // "http://127.0.0.1:PORT"
  const Identity& identity() const { return identity_; }
  // WebSocket upgrades received so far, with their headers.
  std::vector<net::RequestHead> upgrades() const;
  // Health requests that carried a challenge.
  int challenges() const { return challenges_; }
  // WebSocket messages (expert calls) received.
  int messages() const { return messages_; }

 private:
  RogueEndpoint(ProofMode mode);
  const ProofMode mode_;
  const Identity identity_ = Identity::Generate();
  const Identity other_ = Identity::Generate();
  std::unique_ptr<net::HttpServer> http_;
  mutable std::mutex mu_;
  std::vector<net::RequestHead> upgrades_;
  std::atomic<int> challenges_{0};
  std::atomic<int> messages_{0};
};

class Stranger {
 public:
  // A DHT node (not a client: it stores like any peer) joined to `bootstrap`.
  static Result<std::unique_ptr<Stranger>> Start(const std::string& bootstrap);
  ~Stranger();

  const Identity& identity() const { return identity_; }
  // Publishes `expert/<uid>` under its own peer id naming `endpoint`.
  Status AnnounceExpert(const std::string& uid, const std::string& endpoint,
                        std::chrono::seconds ttl);
  // Publishes any record.
  Status Put(const std::string& key, const std::string& subkey, const std::string& value,
             std::chrono::seconds ttl);

 private:
  Stranger() = default;
  Identity identity_ = Identity::Generate();
  std::unique_ptr<dht::Dht> dht_;
};

}  // namespace dmoe::hostile

#endif  // DMOE_TESTS_HOSTILE_ROGUE_AUTH_H_
