// bench/lm: a language model through the swarm, against a dense one, and served by the router.
//
// Quality: examples/kjv_lm.json (a 2-block transformer whose ffn blocks are residual_moe layers
// over 2 x 16 ffn experts of width 128 on 4 dmoe-server processes, k_best 2) trains on the King
// James Version with dmoe-train for --seconds of wall time; examples/kjv_dense.json (the same
// network with a local residual_ffn of hidden 1024 in place of each moe layer: the active
// parameters of k_best = 2 experts) trains locally, through the same dmoe-train, for the same wall
// time. Both print held-out bits per byte (the last 5% of the text); the report gives total and
// active parameters of both.
//
// Serving: the trained mixture is published to a dmoe-router, which generates --tokens tokens per
// stream for 1 and then 8 concurrent streams (POST /v1/models/kjv_lm/generate, "stream": true):
// aggregate tokens/s, time to first token, and p50/p99 time between tokens. Then the baseline:
// the router and the servers stop (checkpointing the experts), and the same weights are served by a
// router and four servers in this process whose expert calls skip the network (bench/lm_local.h),
// for the same 1 and 8 streams; the report gives remote / in-process tokens/s at 8 streams.
//
//   build/bench/lm [--smoke] [--seconds S] [--tokens N] [--seq-len T] [--batch-size B]
//
// Every process is a real one on loopback; nothing here asserts a time. Writes lm.json.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/harness.h"
#include "bench/lm_local.h"
#include "core/status.h"
#include "model/model_spec.h"
#include "net/http_client.h"
#include "net/sse.h"
#include "tests/testing/process.h"
#include "tests/testing/processes.h"
#include "tests/testing/temp_dir.h"

namespace dmoe {
namespace {

using namespace std::chrono_literals;
using bench::After;
using bench::Seconds;
using SteadyClock = std::chrono::steady_clock;

constexpr int kServers = 4;
constexpr int64_t kExpertWidth = 128;  // examples/kjv_lm.json's ffn experts
// One ffn expert of width d: linear1 d x 4d + 4d, linear2 4d x d + d, its layer norm 2d.
constexpr double ExpertParameters(double d) { return d * 4 * d + 4 * d + 4 * d * d + d + 2 * d; }

struct Config {
  bool smoke = false;
  double seconds = 600;  // of training, per model
  int64_t tokens = 128;  // generated per stream
  int64_t seq_len = 64;
  int64_t batch_size = 16;
  int64_t eval_bytes = 0;  // 0 = the whole held-out split
};

struct TrainRun {
  std::string model;
  bool ok = false;
  std::string error;
  int64_t steps = 0;
  double bpb = -1;
  double tokens_per_s = 0;  // median of the progress lines
  double wall_s = 0;
  double total_parameters = 0;
  double active_parameters = 0;
};

Result<model::ModelSpec> ReadSpec(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  return model::ParseModelSpec(text.str());
}

// dmoe-train on the KJV for cfg.seconds (--max-seconds), then its final evaluation.
TrainRun Train(const Config& cfg, const std::string& name, const std::string& dht,
               const std::string& router) {
  TrainRun r;
  r.model = name;
  const std::string spec_path = std::string(DMOE_SOURCE_DIR) + "/examples/" + name + ".json";
  Result<model::ModelSpec> spec = ReadSpec(spec_path);
  if (!spec.ok()) {
    r.error = spec.status().ToString();
    return r;
  }
  // Each moe layer holds every expert of its grid, and runs k_best of them per token.
  r.total_parameters = r.active_parameters = spec->LocalParameterCount();
  for (const model::LayerSpec& l : spec->layers) {
    if (!model::IsMoe(l.type)) continue;
    double cells = 1;
    for (int64_t g : l.moe.grid) cells *= static_cast<double>(g);
    r.total_parameters += cells * ExpertParameters(static_cast<double>(l.in_features));
    r.active_parameters +=
        static_cast<double>(l.moe.k_best) * ExpertParameters(static_cast<double>(l.in_features));
  }
  std::vector<std::string> argv = {testing::TrainBinary(),
                                   "--model",
                                   spec_path,
                                   "--data",
                                   "kjv",
                                   "--seq-len",
                                   std::to_string(cfg.seq_len),
                                   "--batch-size",
                                   std::to_string(cfg.batch_size),
                                   "--lr",
                                   "3e-3",
                                   "--dht",
                                   dht,
                                   "--steps",
                                   "100000000",
                                   "--max-seconds",
                                   std::to_string(cfg.seconds),
                                   "--eval-every",
                                   "0",
                                   "--eval-bytes",
                                   std::to_string(cfg.eval_bytes),
                                   "--publish-every",
                                   "0",
                                   "--log-every",
                                   "20",
                                   "--threads",
                                   "2",
                                   "--log-level",
                                   "error"};
  if (!router.empty()) {
    argv.push_back("--router");
    argv.push_back(router);
  }
  const auto start = SteadyClock::now();
  // The run, then its final evaluation over the held-out split and the publication.
  testing::RunResult run = testing::Run(
      argv, std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::duration<double>(cfg.seconds) + std::chrono::minutes(10)));
  r.wall_s = Seconds(start);
  if (run.exit_code != 0) {
    r.error = "dmoe-train exited " + std::to_string(run.exit_code) + ": " +
              run.err.substr(run.err.size() > 2000 ? run.err.size() - 2000 : 0);
    return r;
  }
  std::vector<double> rates;
  std::istringstream lines(run.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("step ", 0) == 0) {
      const std::string rate = After(line, " tokens/s ");
      if (!rate.empty()) rates.push_back(std::stod(rate));
    } else if (line.rfind("done: steps ", 0) == 0) {
      r.steps = std::stoll(After(line, "done: steps "));
      r.bpb = std::stod(After(line, " bpb "));
    }
  }
  r.tokens_per_s = bench::Percentile(rates, 0.5);
  r.ok = r.bpb > 0;
  if (!r.ok) r.error = "no \"done:\" line with bpb in: " + run.out.substr(0, 2000);
  return r;
}

// One stream's token arrival times, seconds since its request went out.
struct StreamTiming {
  bool ok = false;
  std::string error;
  std::vector<double> arrivals;
  int64_t tokens = 0;
};

StreamTiming Stream(const std::string& url, int64_t tokens, uint64_t seed) {
  StreamTiming t;
  const std::string body = nlohmann::json{
      {"prompt", "And God said, "},
      {"max_tokens", tokens},
      {"temperature", 0.8},
      {"seed", seed},
      {"stream", true}}.dump();
  net::SseParser parser;
  const auto start = SteadyClock::now();
  Result<net::Response> head = net::FetchStream(
      "POST", url, {{"Content-Type", "application/json"}}, net::Bytes(body.begin(), body.end()),
      std::chrono::minutes(10), [&](std::string_view piece) {
        const double now = Seconds(start);
        return parser
            .Feed(piece,
                  [&](net::SseMessage m) {
                    nlohmann::json e = nlohmann::json::parse(m.data, nullptr, false);
                    if (!e.is_object()) return;
                    if (!e.value("text", std::string()).empty()) t.arrivals.push_back(now);
                    if (e.contains("usage")) {
                      t.tokens = e["usage"].value("completion_tokens", int64_t{0});
                    }
                    if (e.value("finish_reason", std::string()) == "error") {
                      t.error = e.dump();
                    }
                  })
            .ok();
      });
  if (!head.ok()) {
    t.error = head.status().ToString();
  } else if (head->status != 200) {
    t.error = "status " + std::to_string(head->status);
  }
  t.ok = t.error.empty() && t.tokens > 0;
  return t;
}

struct ServingRun {
  int streams = 0;
  bool ok = false;
  std::string error;
  double tokens_per_s = 0;  // all streams' tokens over the wall time of the slowest
  double ttft_p50_ms = 0;
  double gap_p50_ms = 0, gap_p99_ms = 0;
};

ServingRun Serve(const std::string& url, int streams, int64_t tokens) {
  ServingRun s;
  s.streams = streams;
  const auto start = SteadyClock::now();
  std::vector<std::future<StreamTiming>> running;
  for (int i = 0; i < streams; ++i) {
    running.push_back(std::async(std::launch::async, [&url, tokens, i] {
      return Stream(url, tokens, static_cast<uint64_t>(i + 1));
    }));
  }
  std::vector<double> ttft, gaps;
  int64_t total = 0;
  for (auto& f : running) {
    StreamTiming t = f.get();
    if (!t.ok) {
      s.error = t.error;
      continue;
    }
    total += t.tokens;
    if (!t.arrivals.empty()) ttft.push_back(t.arrivals.front() * 1000);
    for (size_t i = 1; i < t.arrivals.size(); ++i) {
      gaps.push_back((t.arrivals[i] - t.arrivals[i - 1]) * 1000);
    }
  }
  const double wall = Seconds(start);
  s.ok = s.error.empty();
  s.tokens_per_s = wall > 0 ? static_cast<double>(total) / wall : 0;
  s.ttft_p50_ms = bench::Percentile(ttft, 0.5);
  s.gap_p50_ms = bench::Percentile(gaps, 0.5);
  s.gap_p99_ms = bench::Percentile(gaps, 0.99);
  return s;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

int Main(int argc, char** argv) {
  Config cfg;
  const std::vector<bench::ValueFlag> flags = {{"--seconds", bench::DoubleFlag(&cfg.seconds)},
                                               {"--tokens", bench::Int64Flag(&cfg.tokens)},
                                               {"--seq-len", bench::Int64Flag(&cfg.seq_len)},
                                               {"--batch-size", bench::Int64Flag(&cfg.batch_size)},
                                               {"--eval-bytes", bench::Int64Flag(&cfg.eval_bytes)}};
  if (!bench::ParseFlags(argc, argv,
                         "[--smoke] [--seconds S] [--tokens N] [--seq-len T] [--batch-size B] "
                         "[--eval-bytes N]",
                         flags, &cfg.smoke, [&] {
                           cfg.seconds = 6;
                           cfg.tokens = 8;
                           cfg.eval_bytes = 2048;
                         })) {
    return 2;
  }
  testing::TempDir dir("dmoe-bench-lm");
  auto dht = testing::StartDht({"--log-level", "error"}, 30s);
  if (!dht.ok()) {
    std::fprintf(stderr, "lm: %s\n", dht.status().ToString().c_str());
    return 1;
  }
  std::vector<std::vector<std::string>> server_flags;
  bench::LocalSwarmSpec local_spec;
  local_spec.hidden_dim = kExpertWidth;
  local_spec.router_db = dir.Sub("router");
  for (int i = 0; i < kServers; ++i) {
    std::vector<std::string> uids;
    for (const char* grid : {"ffn0", "ffn1"}) {
      for (int j = 0; j < 4; ++j) {
        uids.push_back(std::string(grid) + "." + std::to_string(i) + "." + std::to_string(j));
      }
    }
    std::string joined;
    for (const std::string& uid : uids) joined += (joined.empty() ? "" : ",") + uid;
    local_spec.server_uids.push_back(uids);
    local_spec.server_dbs.push_back(dir.Sub("server" + std::to_string(i)));
    server_flags.push_back({"--experts", joined, "--hidden-dim", std::to_string(kExpertWidth),
                            "--threads", "1", "--dht", dht->address, "--db",
                            local_spec.server_dbs.back(), "--log-level", "error"});
  }
  auto servers = testing::StartServers(server_flags, 120s);
  if (!servers.ok()) {
    std::fprintf(stderr, "lm: %s\n", servers.status().ToString().c_str());
    return 1;
  }
  auto router = testing::StartRouter(
      {"--dht", dht->address, "--db", dir.Sub("router"), "--threads", "1", "--log-level", "error"},
      60s);
  if (!router.ok()) {
    std::fprintf(stderr, "lm: %s\n", router.status().ToString().c_str());
    return 1;
  }

  const std::string load_before = LoadAverage();
  std::printf("lm: training kjv_lm (swarm) and kjv_dense (local) for %.0f s each; load %s\n",
              cfg.seconds, load_before.c_str());
  std::fflush(stdout);
  TrainRun moe = Train(cfg, "kjv_lm", dht->address, router->endpoint);
  TrainRun dense = Train(cfg, "kjv_dense", dht->address, "");
  std::vector<ServingRun> serving, local;
  std::string local_error;
  if (moe.ok) {
    for (int streams : {1, 8}) {
      serving.push_back(
          Serve(router->endpoint + "/v1/models/kjv_lm/generate", streams, cfg.tokens));
    }
    // The same weights with the experts in this process: the servers' last checkpoints and the
    // router's published model, reopened once their processes exited.
    router->process->Stop(SIGTERM, 30s);
    for (testing::ServerProcess& server : *servers) server.process->Stop(SIGTERM, 30s);
    Status s = bench::WithLocalSwarm(local_spec, [&](const std::string& endpoint) {
      for (int streams : {1, 8}) {
        local.push_back(Serve(endpoint + "/v1/models/kjv_lm/generate", streams, cfg.tokens));
      }
    });
    if (!s.ok()) local_error = s.ToString();
  }
  const std::string load_after = LoadAverage();

  std::printf("%-10s %8s %10s %12s %12s %10s %8s\n", "model", "steps", "bpb", "tokens/s",
              "total par.", "active par.", "wall s");
  nlohmann::json train_json = nlohmann::json::array();
  for (const TrainRun* r : {&moe, &dense}) {
    if (!r->ok) std::fprintf(stderr, "lm: %s failed: %s\n", r->model.c_str(), r->error.c_str());
    std::printf("%-10s %8lld %10.4f %12.1f %12.0f %10.0f %8.1f\n", r->model.c_str(),
                static_cast<long long>(r->steps), r->bpb, r->tokens_per_s, r->total_parameters,
                r->active_parameters, r->wall_s);
    train_json.push_back({{"model", r->model},
                          {"ok", r->ok},
                          {"error", r->error},
                          {"steps", r->steps},
                          {"held_out_bpb", r->bpb},
                          {"train_tokens_per_s", r->tokens_per_s},
                          {"total_parameters", r->total_parameters},
                          {"active_parameters", r->active_parameters},
                          {"wall_s", r->wall_s}});
  }
  std::printf("%-10s %-8s %12s %10s %12s %12s\n", "experts", "streams", "tokens/s", "ttft ms",
              "gap p50 ms", "gap p99 ms");
  nlohmann::json serve_json = nlohmann::json::array();
  if (!local_error.empty()) std::fprintf(stderr, "lm: in-process: %s\n", local_error.c_str());
  for (const auto& [where, runs] :
       {std::pair{"remote", &serving}, std::pair{"in-process", &local}}) {
    for (const ServingRun& s : *runs) {
      if (!s.ok)
        std::fprintf(stderr, "lm: %s, %d streams: %s\n", where, s.streams, s.error.c_str());
      std::printf("%-10s %-8d %12.1f %10.1f %12.1f %12.1f\n", where, s.streams, s.tokens_per_s,
                  s.ttft_p50_ms, s.gap_p50_ms, s.gap_p99_ms);
      serve_json.push_back({{"experts", where},
                            {"streams", s.streams},
                            {"ok", s.ok},
                            {"error", s.error},
                            {"tokens_per_s", s.tokens_per_s},
                            {"ttft_p50_ms", s.ttft_p50_ms},
                            {"gap_p50_ms", s.gap_p50_ms},
                            {"gap_p99_ms", s.gap_p99_ms}});
    }
  }
  if (serving.size() == 2 && serving[0].tokens_per_s > 0) {
    std::printf("8-stream / 1-stream tokens/s (remote): %.2f\n",
                serving[1].tokens_per_s / serving[0].tokens_per_s);
  }
  if (serving.size() == 2 && local.size() == 2 && local[1].tokens_per_s > 0) {
    std::printf("remote / in-process tokens/s at 8 streams: %.2f\n",
                serving[1].tokens_per_s / local[1].tokens_per_s);
  }
  std::printf("load average: %s before, %s after\n", load_before.c_str(), load_after.c_str());
  const bool ok = moe.ok && dense.ok && serving.size() == 2 && serving[0].ok && serving[1].ok &&
                  local.size() == 2 && local[0].ok && local[1].ok;
  nlohmann::json report = {{"smoke", cfg.smoke},
                           {"seconds", cfg.seconds},
                           {"seq_len", cfg.seq_len},
                           {"batch_size", cfg.batch_size},
                           {"eval_bytes", cfg.eval_bytes},
                           {"tokens_per_stream", cfg.tokens},
                           {"cores", std::thread::hardware_concurrency()},
                           {"load_before", load_before},
                           {"load_after", load_after},
                           {"training", train_json},
                           {"serving", serve_json}};
  if (!bench::Report("lm", report)) return 1;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace dmoe

int main(int argc, char** argv) { return dmoe::Main(argc, argv); }
