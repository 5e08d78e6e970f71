// A local swarm of real processes for multi-process tests: a dmoe-dht bootstrap node and N
// dmoe-server processes hosting a 4-wide grid row each ("ffn.<i>.[0:4]"), plus helpers to run
// dmoe-train against it and read what it printed. Every child is killed and reaped by RAII.
#ifndef DMOE_TESTS_INTEGRATION_SWARM_UTIL_H_
#define DMOE_TESTS_INTEGRATION_SWARM_UTIL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::integration {

// The spec of the end-to-end tests: 784 -> 64 -> residual moe over ffn.[0:4].[0:4] -> 10.
extern const char kFmnistTestSpec[];

// A dmoe-dht on 127.0.0.1:0 (tests/testing/processes.h); `address` is "127.0.0.1:PORT".
using testing::DhtProcess;
using testing::StartDht;

// Flags of server `index` of a test swarm: experts ffn.<index>.[0:4], hidden dim 64, one compute
// thread, announcing every second with a 3 s TTL, joined to `dht`, with --db `db` when not empty.
std::vector<std::string> SwarmServerArgs(int index, const std::string& dht, const std::string& db);

// A dmoe-router for a test swarm: joined to `dht`, models in `db`, publications signed by the keys
// in the file `keys`, watching "ffn." and refreshing its view every 500 ms. After a failed
// expectation (with the router's stderr) it returns an empty RouterProcess when it does not start.
testing::RouterProcess StartSwarmRouter(const std::string& dht, const std::string& db,
                                        const std::string& keys);

// dmoe-train flags for `spec` against `dht` (warn logs, one compute thread), then `extra`.
std::vector<std::string> TrainArgs(const std::string& spec, const std::string& dht,
                                   const std::vector<std::string>& extra);

// What one finished dmoe-train printed: its "done:" line, parsed; -1 where absent.
struct TrainSummary {
  int64_t steps = -1;
  double test_accuracy = -1;
  int64_t max_staleness = -1;  // the largest "max_staleness N" of its progress lines
};
TrainSummary ParseTrainOutput(const std::string& out);

// The value of `name{labels}` in a Prometheus text page (labels as written, e.g.
// `reason="stale"`), or nullopt when absent.
std::optional<double> PrometheusValue(const std::string& page, const std::string& name,
                                      const std::string& labels = "");

}  // namespace dmoe::integration

#endif  // DMOE_TESTS_INTEGRATION_SWARM_UTIL_H_
