// Internal to expert_server: the ExpertServer implementation, split between server.cc (lifecycle,
// checkpoints, announcements; torch-free) and api.cc (HTTP and WebSocket handlers, which make
// tensors). Everything it includes is torch-free, so server.cc compiles without libtorch.
#ifndef DMOE_EXPERT_SERVER_SERVER_IMPL_H_
#define DMOE_EXPERT_SERVER_SERVER_IMPL_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/host_port.h"
#include "core/identity.h"
#include "core/metrics.h"
#include "core/request_auth.h"
#include "dht/dht.h"
#include "expert_server/runtime.h"
#include "expert_server/server.h"
#include "net/http_server.h"
#include "net/io_context.h"
#include "storage/expert_store.h"

namespace dmoe::expert_server {

class ServerImpl : public ExpertServer {
 public:
  explicit ServerImpl(ExpertServerOptions options);
  ~ServerImpl() override;

  Status Init();

  std::string endpoint() const override;
  std::string listen_endpoint() const override;
  uint16_t port() const override { return http_->port(); }
  std::string peer_id() const override { return identity_.peer_id(); }
  ExpertServerStats stats() const override;
  Status CheckpointNow() override;
  void Stop() override;
  void CallLocal(std::span<const uint8_t> message,
                 std::function<void(std::vector<uint8_t>)> answer) override;

 private:
  // How an answer goes back: a finished blob, or an error.
  using Reply = std::function<void(Result<std::vector<uint8_t>>)>;

  // api.cc
  void RegisterRoutes();
  Status CheckTrainingHead(const net::RequestHead& head);
  Status VerifyTraining(const net::RequestHead& head, std::span<const uint8_t> signed_body);
  // Parses a forward/backward blob for `uid` and hands it to the runtime; `reply` gets the answer
  // (with `extra_metadata` added to it) exactly once, possibly before this returns.
  void Dispatch(TaskKind kind, const std::string& uid, std::span<const uint8_t> blob,
                std::map<std::string, std::string> extra_metadata, Reply reply);
  // Decodes and dispatches `message`; its bytes are not used after the call.
  void HandleWsMessage(const std::shared_ptr<net::WsConnection>& conn,
                       std::span<const uint8_t> message);
  // What a request blob of the WebSocket protocol gets, wherever it came from: `signed_upgrade`
  // tells whether its connection's upgrade carried a key; `begin` admits it (false: refused as
  // too many in flight) and `end` runs when it is answered; `send` takes every answer blob.
  void HandleMessage(std::span<const uint8_t> message, bool signed_upgrade,
                     const std::function<bool()>& begin, std::function<void()> end,
                     std::function<void(std::vector<uint8_t>)> send);
  std::string ExpertInfoJson(const std::string& uid) const;
  void CountRequest(const std::string& op, Code code, double seconds);

  // server.cc
  void RegisterRuntimeMetrics();
  void RegisterMemoryMetrics();
  void MaintenanceLoop();
  void Announce();
  bool InjectFailure();
  bool InjectNan();

  const ExpertServerOptions options_;
  const Clock& clock_;  // *options_.clock, checked by ExpertServer::Start
  // The requests of sequence experts may carry a mask (and their schema says [B, T, d]).
  const bool sequence_experts_;
  std::optional<HostPort> public_endpoint_;  // options_.public_endpoint, parsed
  const Identity& identity_;                 // *options_.identity, checked by ExpertServer::Start
  std::unique_ptr<RequestVerifier> verifier_;
  ProofRateLimiter proof_limiter_;     // GET /v1/health?challenge=
  storage::ExpertStore* const store_;  // options_.store: lent, or nullptr
  std::unique_ptr<Runtime> runtime_;
  dht::Dht* const dht_;  // options_.dht: lent, or nullptr
  // Without options_.io, the network threads are the server's own; declared before http_, which
  // uses them, so that they outlive it.
  std::unique_ptr<net::IoContext> own_io_;
  std::unique_ptr<net::HttpServer> http_;
  Metrics metrics_;
  const int64_t started_ms_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread maintenance_;
  std::mutex checkpoint_mu_;  // one checkpoint at a time
  std::mutex rng_mu_;
  std::mt19937_64 rng_{std::random_device{}()};
  std::atomic<bool> stopped_{false};
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_SERVER_IMPL_H_
