// Talking to expert servers: one request blob out, one answer blob back, over one pooled WebSocket
// per endpoint (PROTOCOL section 4); and the two small HTTP questions a trainer asks an endpoint:
// is it up (Probe), and does it hold the key that announced it (Prove).
//
// Torch-free: callers encode and decode the safetensors blobs (gating/dispatch.cc). Answers are
// matched to requests by the `id` of their metadata, so any number of requests share one
// connection.
//
// Time: deadlines are on the Clock given at construction; the network timers behind them run in
// real time (RealTimeBound), so under a FakeClock a deadline bounds a connect or a probe by the
// real time it is away when the call starts.
//
// Threads: every method may be called from any thread; the destructor not from a callback.
// Callbacks run on one of the caller's io threads (a call that fails at once: on the thread that
// called Send; at destruction: on the destroying thread; a call to a local endpoint: on the thread
// that answers it) and must not block: they hand the outcome over, to a waiting thread or into a
// peer's health.
#ifndef DMOE_GATING_EXPERT_CALLER_H_
#define DMOE_GATING_EXPERT_CALLER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "net/http_client.h"
#include "net/http_message.h"
#include "net/io_context.h"

namespace dmoe::gating {

// The outcome of one call: the answer blob (OK, possibly a server-side error decoded later), or
// why none came.
struct CallOutcome {
  Status status;
  net::Bytes blob;
  double latency_s = 0;  // on the caller's clock, from sending to the answer
};

// What an endpoint's answer to a challenge showed.
enum class ProofResult {
  kProven,       // it signed the challenge with the expected key
  kRefused,      // it answered, but without a valid proof for that key: the record lies
  kUnreachable,  // no answer (connection refused, timeout, ...): nothing is known
};

// An expert server in the caller's own process: takes a request blob and calls `answer` exactly
// once with the answer blob (expert_server::ExpertServer::CallLocal), on any thread, never
// blocking.
using LocalEndpoint =
    std::function<void(net::Bytes request, std::function<void(net::Bytes answer)> answer)>;

struct CallerOptions {
  // Signs WebSocket upgrades (PROTOCOL section 4) so that servers with --trainer-keys accept
  // backward; none = unsigned.
  std::optional<Identity> identity;
  int io_threads = 1;
  uint64_t max_message_bytes = 64ull << 20;
  // The process's buffer pool (net/buffer_pool.h), which must outlive the caller; null: the
  // caller keeps its own.
  net::BufferPool* buffer_pool = nullptr;
  // Endpoints ("http://host:port") whose servers run in this process: Send hands their calls to
  // these functions instead of a WebSocket (bench/lm's baseline with the experts local). Probe and
  // Prove still ask them over HTTP.
  std::map<std::string, LocalEndpoint> local;
};

// Owns its io threads and connections; destroying it fails what is in flight.
class ExpertCaller {
 public:
  using Callback = std::function<void(CallOutcome)>;

  // `clock` must outlive the caller; it stamps signed upgrades (unix time) and measures latency.
  explicit ExpertCaller(const Clock& clock, CallerOptions options = {});
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

  const Clock& clock_;
  CallerOptions options_;
  net::IoContext io_;
  net::WsClient ws_;
  net::HttpClient http_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Peer>> peers_;
  std::map<std::string, std::string> peer_ids_;  // endpoint -> proven peer id
};

}  // namespace dmoe::gating

#endif  // DMOE_GATING_EXPERT_CALLER_H_
