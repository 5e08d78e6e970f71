// SwarmView: what the router knows of the swarm, for GET /v1/swarm and the dashboard. A background
// thread walks the DHT grid under every watched prefix (prefix/... then expert/... records), checks
// each server's /v1/health, and keeps a short history for the charts.
//
// An expert is "alive" when its record is current and its server answered the last health check,
// "unreachable" when its record is current but the server did not answer, and "stale" when its
// record expired (it is kept, as stale, for forget_after_ms so a person sees what went away).
// Thread-safe: Snapshot may be called from any thread while the refresh thread runs. The refresh
// thread (one, started by Start) blocks on the DHT and on the health checks, whose calls run on the
// lent io context.
#ifndef DMOE_ROUTER_SWARM_H_
#define DMOE_ROUTER_SWARM_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "net/http_client.h"

namespace dmoe::router {

struct SwarmExpert {
  std::string uid;
  std::string peer_id;
  std::string endpoint;
  int64_t expires_at_ms = 0;
  int64_t step = 0;
  double load = 0;
  std::string type;
  int64_t hidden_dim = 0;
  std::string status;        // alive, unreachable, stale
  double latency_ms = -1;    // of the server's last health check; -1 when it did not answer
  int64_t last_seen_ms = 0;  // when its record was last found
};

struct SwarmPoint {
  int64_t t_ms = 0;
  int alive = 0;
  int unreachable = 0;
  int stale = 0;
  double health_latency_ms = 0;  // mean over servers that answered
};

struct SwarmSnapshot {
  std::vector<SwarmExpert> experts;  // sorted by uid, then peer
  std::vector<SwarmPoint> history;   // oldest first
  size_t dht_routing_table = 0;
  int64_t refreshed_at_ms = 0;
};

struct SwarmOptions {
  int64_t refresh_ms = 2000;
  int64_t forget_after_ms = 5 * 60'000;
  int64_t history_ms = 10 * 60'000;
  std::chrono::milliseconds dht_timeout{3000};
  std::chrono::milliseconds health_timeout{2000};
};

class SwarmView {
 public:
  // `dht`, `clock`, `pool` and `io` must outlive the view; health checks run on `io`'s threads
  // and read their answers into `pool`'s buffers.
  SwarmView(dht::Dht& dht, SwarmOptions options, const Clock& clock, net::BufferPool& pool,
            net::IoContext& io);
  ~SwarmView();

  // Watches the grid under `grid_prefix` ("ffn."). Any thread.
  void Watch(const std::string& grid_prefix);
  void Start();
  void Stop();
  // Runs one refresh now, on the calling thread (used by Start's thread and by tests).
  void RefreshOnce();
  SwarmSnapshot Snapshot() const;

 private:
  // uid -> (peer_id -> announcement record facts) found under the watched prefixes.
  std::vector<SwarmExpert> Walk();

  dht::Dht& dht_;
  const SwarmOptions options_;
  const Clock& clock_;
  net::HttpClient http_;

  mutable std::mutex mu_;
  std::set<std::string> prefixes_;
  std::map<std::pair<std::string, std::string>, SwarmExpert> experts_;  // (uid, peer_id)
  std::deque<SwarmPoint> history_;
  int64_t refreshed_at_ms_ = 0;
  size_t routing_table_ = 0;

  std::mutex run_mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_SWARM_H_
