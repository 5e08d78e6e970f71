// Poisoning peers for the hostile-peers suite (issue 12), built from our own net/, dht/ and
// tensor/ code with bad behaviour switched on. Test helpers only: never linked into a binary.
//
// RogueServer is an expert server that announces uids in the DHT exactly as dmoe-server does
// (PROTOCOL section 6) and speaks its WebSocket protocol (section 4), but every answer is poison
// of one kind: garbage bytes, huge finite values (3e38), a wrong shape, NaN, an error code
// an honest server would not send for a valid input, or no answer at all. GET /v1/health answers
// 200, so a ban's probe lets it back in and it keeps trying.
//
// SendHugeGradients is a rogue trainer: backward requests whose grad_y is enormous but finite.
#ifndef DMOE_TESTS_HOSTILE_ROGUE_SERVER_H_
#define DMOE_TESTS_HOSTILE_ROGUE_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/status.h"

namespace dmoe::dht {
class Dht;
}  // namespace dmoe::dht
namespace dmoe::net {
class HttpServer;
}  // namespace dmoe::net

namespace dmoe::hostile {

enum class RogueAnswer {
  kGarbage,          // y of the right shape whose bytes are random (NaN, Inf, 1e30, ...)
  kHuge,             // y of the right shape, every value 3e38 (finite)
  kWrongShape,       // y of shape [B, d + 1]
  kNan,              // y of the right shape, all NaN
  kInvalidArgument,  // an invalid_argument error for a valid x
  kStall,            // never answers
};

const char* RogueAnswerName(RogueAnswer answer);

struct RogueServerOptions {
  RogueAnswer answer = RogueAnswer::kHuge;
  std::vector<std::string> uids;  // announced as hosted here
  int64_t hidden_dim = 64;
  // HOST:PORT of a DHT node to announce through; empty = no announcement.
  std::string dht_bootstrap;
  std::string dht_network = "dmoe";
};

class RogueServer {
 public:
  // Listens on 127.0.0.1 (a free port) and, with a DHT, announces every uid (TTL 10 minutes, so
  // it stays announced for the whole test) before returning.
  static Result<std::unique_ptr<RogueServer>> Start(RogueServerOptions options);
  ~RogueServer();

  std::string endpoint() const;  // "http://127.0.0.1:PORT"
  // The key its DHT node announces with (kept here so that a rogue can be made to prove it, or to
  // fail to, where endpoints must prove their publisher).
  const Identity& identity() const { return identity_; }
  // WebSocket requests received so far (any thread).
  int64_t requests() const { return requests_->load(); }
  void Stop();

 private:
  RogueServer() = default;
  RogueServerOptions options_;
  Identity identity_ = Identity::Generate();
  std::shared_ptr<std::atomic<int64_t>> requests_ = std::make_shared<std::atomic<int64_t>>(0);
  std::unique_ptr<net::HttpServer> http_;
  std::unique_ptr<dht::Dht> dht_;
};

// A rogue trainer: POSTs /v1/experts/{uid}/backward to `endpoint` once per value of `scales`, with
// x random in [-1, 1) of shape [batch, hidden_dim] and grad_y = scale * (random in [-1, 1)).
// Returns the HTTP status of each answer, in order (0 when no answer came).
std::vector<int> SendHugeGradients(const std::string& endpoint, const std::string& uid,
                                   int64_t hidden_dim, const std::vector<float>& scales,
                                   int64_t batch = 4);

}  // namespace dmoe::hostile

#endif  // DMOE_TESTS_HOSTILE_ROGUE_SERVER_H_
