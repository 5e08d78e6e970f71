// DHT benchmark. Usage: dht [--smoke]. Writes ${DMOE_BENCH_OUT:-bench/results}/dht.json.
//
// Simulated part: for N = 64, 256, 1024 nodes, one-way link delay 0 / 10 / 50 ms (+-20% jitter) and
// 0 / 10 / 30 % of the nodes replaced during the run, 32 publishers announce keys (re-announcing
// every 15 s with a 45 s expiration, as expert servers do) and a joined client node that holds
// nothing gets random keys one at a time. Reported: get success rate, p50/p99 lookup latency in
// virtual time, RPCs and rounds per lookup, and CPU microseconds per lookup (the whole simulation's
// CPU time while the get runs, so it includes the answering nodes' work).
//
// Real part: N dmoe DHT nodes as threads of this process on loopback UDP (each with its own socket
// and thread), a client node gets random keys with one get in flight; wall-clock p50/p99; then 30 %
// of the nodes stop and the gets go on (the time until the get returns to its caller).
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "core/clock.h"
#include "dht/dht.h"
#include "dht/sim_network.h"

namespace {

using dmoe::bench::Percentile;
using dmoe::dht::KeyResult;
using dmoe::dht::NodeOptions;
using dmoe::dht::SimNetwork;

int64_t ThreadCpuUs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}

struct SimRow {
  int n;
  int delay_ms;
  int churn_pct;
  int gets = 0;
  double success = 0;
  double p50_ms = 0, p99_ms = 0;
  double rpcs = 0, rounds_p50 = 0, rounds_mean = 0;
  double cpu_us = 0;
};

SimRow RunSim(int n, int delay_ms, int churn_pct, int gets, uint64_t seed) {
  SimRow row{n, delay_ms, churn_pct};
  SimNetwork net(seed);
  net.set_link({delay_ms * 1000, delay_ms * 200, 0});
  NodeOptions o;
  o.network = "bench";
  // Publishers re-put every 15 s themselves (below), like expert servers; the node's own republish
  // would only add background load to the CPU figure.
  o.republish_interval_ms = 600'000;
  std::mt19937_64 rng(seed);
  std::vector<size_t> ids;
  for (int i = 0; i < n; ++i) {
    size_t idx = net.AddNode(o);
    if (!ids.empty()) net.node(idx).Bootstrap({net.address(ids[rng() % ids.size()])}, nullptr);
    ids.push_back(idx);
    if (i % 32 == 31) net.RunFor(500);
  }
  net.RunFor(10'000);
  std::vector<size_t> publishers(ids.begin(), ids.begin() + 32);
  std::vector<size_t> replaceable(ids.begin() + 32, ids.end());
  std::vector<std::pair<std::string, size_t>> keys;
  auto announce = [&] {
    for (const auto& [key, p] : keys) {
      net.node(p).Put(key, net.node(p).identity().peer_id(), "{\"endpoint\":\"http://h:1\"}",
                      45'000, nullptr);
    }
  };
  for (size_t p : publishers) {
    for (int j = 0; j < 4; ++j)
      keys.push_back({"expert/ffn." + std::to_string(p) + "." + std::to_string(j), p});
  }
  announce();
  net.RunFor(5000);
  NodeOptions client_options = o;
  client_options.client = true;
  size_t client = net.AddNode(client_options);
  net.node(client).Bootstrap({net.address(publishers[0])}, nullptr);
  net.RunFor(3000);

  const int kRounds = 20;
  int per_round = std::max(1, gets / kRounds);
  size_t to_replace = static_cast<size_t>(n) * static_cast<size_t>(churn_pct) / 100;
  size_t replaced = 0;
  std::vector<double> latency, rounds;
  double rpcs = 0;
  int64_t cpu = 0;
  int ok = 0;
  int64_t last_announce = net.clock().NowMonotonicUs();
  for (int round = 0; round < kRounds; ++round) {
    size_t target = to_replace * static_cast<size_t>(round + 1) / kRounds;
    for (; replaced < target; ++replaced) {
      size_t pos = rng() % replaceable.size();
      net.Remove(replaceable[pos]);
      size_t fresh = net.AddNode(o);
      net.node(fresh).Bootstrap({net.address(publishers[rng() % publishers.size()])}, nullptr);
      replaceable[pos] = fresh;
    }
    net.RunFor(1500);
    if (net.clock().NowMonotonicUs() - last_announce >= 15'000'000) {
      announce();
      last_announce = net.clock().NowMonotonicUs();
      net.RunFor(3000);  // let the announcements land before timing gets
    }
    for (int g = 0; g < per_round; ++g) {
      const std::string& key = keys[rng() % keys.size()].first;
      std::optional<KeyResult> result;
      int64_t start = net.clock().NowMonotonicUs();
      int64_t end = start;
      int64_t cpu_start = ThreadCpuUs();
      net.node(client).GetMany({key}, 5000, [&](std::vector<KeyResult> r) {
        result = std::move(r.front());
        end = net.clock().NowMonotonicUs();
      });
      net.RunUntil([&] { return result.has_value(); }, 6000);
      cpu += ThreadCpuUs() - cpu_start;
      ++row.gets;
      if (result && result->status.ok()) ++ok;
      if (result) {
        latency.push_back(static_cast<double>(end - start) / 1000.0);
        rounds.push_back(result->rounds);
        rpcs += result->rpcs;
      }
    }
  }
  row.success = static_cast<double>(ok) / row.gets;
  row.p50_ms = Percentile(latency, 0.5);
  row.p99_ms = Percentile(latency, 0.99);
  row.rpcs = rpcs / std::max<size_t>(1, latency.size());
  row.rounds_p50 = Percentile(rounds, 0.5);
  double sum = 0;
  for (double r : rounds) sum += r;
  row.rounds_mean = sum / std::max<size_t>(1, rounds.size());
  row.cpu_us = static_cast<double>(cpu) / row.gets;
  return row;
}

struct UdpRow {
  int n;
  std::string phase;
  int gets = 0;
  double success = 0, p50_ms = 0, p99_ms = 0;
};

std::vector<UdpRow> RunUdp(int n, int gets) {
  using namespace std::chrono_literals;
  std::vector<UdpRow> rows;
  std::vector<std::unique_ptr<dmoe::dht::Dht>> nodes;
  auto start_node = [&](bool client, const std::string& via) -> std::unique_ptr<dmoe::dht::Dht> {
    dmoe::dht::DhtOptions o;
    o.clock = &dmoe::RealClock::Instance();
    o.listen = "127.0.0.1:0";
    if (!via.empty()) o.bootstrap = {via};
    o.node.network = "bench-udp";
    o.node.client = client;
    o.node.requests_per_second_per_address = 0;  // every node shares 127.0.0.1
    auto d = dmoe::dht::Dht::Start(std::move(o));
    if (!d.ok()) {
      std::fprintf(stderr, "dht bench: %s\n", d.status().ToString().c_str());
      return nullptr;
    }
    return std::move(*d);
  };
  std::mt19937_64 rng(99);
  for (int i = 0; i < n; ++i) {
    auto d = start_node(false, nodes.empty() ? "" : nodes[rng() % nodes.size()]->local_address());
    if (!d) return rows;
    d->WaitBootstrapped(5s).IgnoreError();
    nodes.push_back(std::move(d));
  }
  std::vector<std::string> keys;
  for (int i = 0; i < 64; ++i) {
    keys.push_back("expert/ffn." + std::to_string(i));
    nodes[static_cast<size_t>(i) % nodes.size()]
        ->PutBlocking(keys.back(), "p", "{\"endpoint\":\"http://h:1\"}", 300s)
        .status()
        .IgnoreError();
  }
  auto client = start_node(true, nodes[0]->local_address());
  if (!client) return rows;
  client->WaitBootstrapped(5s).IgnoreError();
  auto measure = [&](const std::string& phase) {
    UdpRow row{n, phase};
    std::vector<double> latency;
    int ok = 0;
    for (int g = 0; g < gets; ++g) {
      auto t0 = std::chrono::steady_clock::now();
      KeyResult r = client->GetManyBlocking({keys[rng() % keys.size()]}, 5s).front();
      auto t1 = std::chrono::steady_clock::now();
      latency.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      ok += r.status.ok();
      ++row.gets;
    }
    row.success = static_cast<double>(ok) / row.gets;
    row.p50_ms = Percentile(latency, 0.5);
    row.p99_ms = Percentile(latency, 0.99);
    rows.push_back(row);
  };
  measure("static");
  // Stop 30 % of the nodes at once (never node 0, the client's bootstrap), then keep getting.
  std::vector<size_t> order(nodes.size() - 1);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i + 1;
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t i = 0; i < nodes.size() * 3 / 10; ++i) nodes[order[i]]->Stop();
  measure("30% stopped");
  client->Stop();
  for (auto& d : nodes) d->Stop();
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  if (!dmoe::bench::ParseFlags(argc, argv, "[--smoke]", {}, &smoke)) return 2;
  std::vector<int> sizes = smoke ? std::vector<int>{64} : std::vector<int>{64, 256, 1024};
  std::vector<int> delays = smoke ? std::vector<int>{10} : std::vector<int>{0, 10, 50};
  std::vector<int> churns = smoke ? std::vector<int>{0, 30} : std::vector<int>{0, 10, 30};
  int gets = smoke ? 20 : 200;

  nlohmann::json sim = nlohmann::json::array();
  bool goals_met = true;
  std::printf("%6s %6s %6s %6s %8s %9s %9s %7s %7s %7s %9s\n", "N", "delay", "churn", "gets",
              "success", "p50_ms", "p99_ms", "rpcs", "rnd50", "rnd_avg", "cpu_us");
  uint64_t seed = 1;
  for (int n : sizes) {
    for (int delay : delays) {
      for (int churn : churns) {
        SimRow r = RunSim(n, delay, churn, gets, seed++);
        std::printf("%6d %6d %5d%% %6d %7.1f%% %9.1f %9.1f %7.1f %7.1f %7.2f %9.0f\n", r.n,
                    r.delay_ms, r.churn_pct, r.gets, 100 * r.success, r.p50_ms, r.p99_ms, r.rpcs,
                    r.rounds_p50, r.rounds_mean, r.cpu_us);
        std::fflush(stdout);
        double round_goal = std::log2(n) / 3 + 1;
        bool met =
            (churn == 0 ? r.success >= 1.0 : r.success >= 0.99) && r.rounds_p50 <= round_goal;
        goals_met = goals_met && met;
        sim.push_back({{"n", r.n},
                       {"delay_ms", r.delay_ms},
                       {"churn_pct", r.churn_pct},
                       {"gets", r.gets},
                       {"success_rate", r.success},
                       {"latency_p50_ms", r.p50_ms},
                       {"latency_p99_ms", r.p99_ms},
                       {"rpcs_per_lookup", r.rpcs},
                       {"rounds_p50", r.rounds_p50},
                       {"rounds_mean", r.rounds_mean},
                       {"rounds_goal", round_goal},
                       {"cpu_us_per_lookup", r.cpu_us},
                       {"goals_met", met}});
      }
    }
  }

  nlohmann::json udp = nlohmann::json::array();
  std::printf("\nreal UDP on loopback, one get in flight (wall clock)\n");
  std::printf("%6s %14s %6s %8s %9s %9s\n", "N", "phase", "gets", "success", "p50_ms", "p99_ms");
  for (int n : smoke ? std::vector<int>{16} : std::vector<int>{64, 256}) {
    for (const UdpRow& r : RunUdp(n, smoke ? 20 : 500)) {
      std::printf("%6d %14s %6d %7.1f%% %9.3f %9.3f\n", r.n, r.phase.c_str(), r.gets,
                  100 * r.success, r.p50_ms, r.p99_ms);
      double goal = r.phase == "static" ? (r.n <= 64 ? 1.0 : 1.5) : 50.0;
      bool met = r.p50_ms <= goal && r.success >= 0.99;
      if (!smoke) goals_met = goals_met && met;
      udp.push_back({{"n", r.n},
                     {"phase", r.phase},
                     {"gets", r.gets},
                     {"success_rate", r.success},
                     {"latency_p50_ms", r.p50_ms},
                     {"latency_p99_ms", r.p99_ms},
                     {"p50_goal_ms", goal},
                     {"goal_met", met}});
    }
  }
  std::printf("goals (100%% static, >=99%% churn, p50 rounds <= log2(N)/3+1, UDP p50): %s\n",
              goals_met ? "met" : "NOT all met");

  const nlohmann::json report = {{"benchmark", "dht"},
                                 {"smoke", smoke},
                                 {"simulated", sim},
                                 {"real_udp", udp},
                                 {"goals_met", goals_met}};
  return dmoe::bench::Report("dht", report) ? 0 : 1;
}
