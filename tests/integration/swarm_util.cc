#include "tests/integration/swarm_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <regex>
#include <sstream>

namespace dmoe::integration {

const char kFmnistTestSpec[] = R"({"name": "fmnist", "input_dim": 784, "layers": [
  {"type": "linear", "out": 64}, {"type": "relu"},
  {"type": "residual_moe", "uid_prefix": "ffn", "grid": [4, 4], "k_best": 4, "k_min": 1,
   "forward_timeout_ms": 5000, "timeout_after_k_min_ms": 300, "backward_k_min": 1,
   "backward_timeout_ms": 5000},
  {"type": "layer_norm"}, {"type": "linear", "out": 10}]})";

std::vector<std::string> SwarmServerArgs(int index, const std::string& dht, const std::string& db) {
  std::vector<std::string> args = {"--listen",
                                   "127.0.0.1:0",
                                   "--experts",
                                   "ffn." + std::to_string(index) + ".[0:4]",
                                   "--hidden-dim",
                                   "64",
                                   "--threads",
                                   "1",
                                   "--dht",
                                   dht,
                                   "--announce-every",
                                   "1",
                                   "--announce-ttl",
                                   "3"};
  if (!db.empty()) args.insert(args.end(), {"--db", db});
  return args;
}

testing::RouterProcess StartSwarmRouter(const std::string& dht, const std::string& db,
                                        const std::string& keys) {
  auto r = testing::StartRouter({"--dht", dht, "--db", db, "--trainer-keys", keys, "--watch",
                                 "ffn.", "--refresh-ms", "500", "--threads", "1"});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : testing::RouterProcess{};
}

std::vector<std::string> TrainArgs(const std::string& spec, const std::string& dht,
                                   const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {
      testing::TrainBinary(), "--model", spec, "--dht", dht, "--threads", "1",
      "--log-level",          "warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

TrainSummary ParseTrainOutput(const std::string& out) {
  TrainSummary s;
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(done: steps (\d+) test_accuracy ([-0-9.]+))"))) {
    s.steps = std::stoll(m[1]);
    s.test_accuracy = std::stod(m[2]);
  }
  const std::regex stale(R"(max_staleness (\d+))");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), stale); it != std::sregex_iterator();
       ++it) {
    s.max_staleness = std::max<int64_t>(s.max_staleness, std::stoll((*it)[1]));
  }
  return s;
}

std::optional<double> PrometheusValue(const std::string& page, const std::string& name,
                                      const std::string& labels) {
  const std::string key = labels.empty() ? name + " " : name + "{" + labels + "} ";
  std::istringstream lines(page);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size()));
  }
  return std::nullopt;
}

}  // namespace dmoe::integration
