// bench/lm's baseline: the same trained swarm with its experts in the benchmark's own process, so
// that serving through the network can be set against serving with no network between the router
// and the experts (issue 14: remote / in-process tokens/s).
#ifndef DMOE_BENCH_LM_LOCAL_H_
#define DMOE_BENCH_LM_LOCAL_H_

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace dmoe::bench {

struct LocalSwarmSpec {
  // Per server: the uids it hosts and the database directory its dmoe-server checkpointed them to
  // (that process has exited).
  std::vector<std::vector<std::string>> server_uids;
  std::vector<std::string> server_dbs;
  int64_t hidden_dim = 0;
  // The database of the dmoe-router that held the published model (that process has exited).
  std::string router_db;
  int compute_threads = 1;  // libtorch intra-op threads of this process
};

// Reopens the servers' checkpoints in ExpertServers of this process, which announce on a DHT of
// their own, and the router's models in a Router of this process whose expert calls go to
// ExpertServer::CallLocal (gating::CallerOptions::local): every hop but client-router is gone.
// Calls `serve` with the in-process router's endpoint ("http://127.0.0.1:PORT") once all experts
// are found in the DHT, then stops everything. An error when any part fails to start.
Status WithLocalSwarm(const LocalSwarmSpec& spec,
                      const std::function<void(const std::string& router_endpoint)>& serve);

}  // namespace dmoe::bench

#endif  // DMOE_BENCH_LM_LOCAL_H_
