// bench/moe_layer: forward+backward step time of RemoteMixtureOfExperts (16 ffn experts, d=256,
// on 4 dmoe-server processes, k=4, batch 64) against the same mixture computed in this process
// with identical experts, in the same run; then the same with 1 of 4 servers SIGSTOPped.
// Goals: ratio <= 1.25 healthy; stopped: step <= timeout_after_k_min + 1.25 x healthy.
// Binaries come from the build (tests/testing/processes.h) unless DMOE_SERVER_BINARY /
// DMOE_DHT_BINARY say otherwise. `--smoke` runs few steps.
#include <ATen/ATen.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "core/clock.h"
#include "dht/dht.h"
#include "expert_server/expert.h"
#include "expert_server/optimizer.h"
#include "gating/gating.h"
#include "tests/testing/processes.h"

using namespace std::chrono_literals;
using namespace dmoe;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr int64_t kDim = 256, kBatch = 64;
constexpr int kK = 4;

// The local twin of the remote mixture: same experts (parameters with autograd), same gating.
struct LocalMixture {
  std::map<std::string, std::map<std::string, at::Tensor>> params;
  LocalMixture() {
    expert_server::ExpertConfig config;
    config.hidden_dim = kDim;
    config.seed = 7;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) {
        std::string uid = "ffn." + std::to_string(i) + "." + std::to_string(j);
        auto e = std::move(expert_server::Expert::Create(
                               expert_server::ExpertRegistry::WithBuiltins(), uid, config, {}))
                     .value();
        for (auto& [name, t] : e->Parameters())
          params[uid][name] = t.detach().clone().set_requires_grad(true);
        std::vector<std::pair<std::string, at::Tensor>> named(params[uid].begin(),
                                                              params[uid].end());
        optimizers.emplace(uid, expert_server::Optimizer(std::move(named), {}));
      }
  }
  // What a server does after each backward: the expert's optimizer (default Adam) steps on the
  // gradients of the experts that were used.
  void StepExperts() {
    for (auto& [uid, opt] : optimizers) {
      if (!params[uid].begin()->second.grad().defined()) continue;
      if (opt.GradientsFinite()) opt.Step().IgnoreError();
    }
  }
  std::map<std::string, expert_server::Optimizer> optimizers;
  at::Tensor Ffn(const std::string& uid, const at::Tensor& x) {
    auto& p = params[uid];
    at::Tensor h = at::gelu(at::linear(x, p["linear1.weight"], p["linear1.bias"]));
    return at::layer_norm(x + at::linear(h, p["linear2.weight"], p["linear2.bias"]), {kDim},
                          p["norm.weight"], p["norm.bias"], 1e-5);
  }
  // Token-level top-k over the 4x4 grid, tokens grouped per expert as the remote layer does.
  at::Tensor Forward(const std::vector<at::Tensor>& gw, const std::vector<at::Tensor>& gb,
                     const at::Tensor& x) {
    at::Tensor s0 = at::linear(x, gw[0], gb[0]), s1 = at::linear(x, gw[1], gb[1]);
    at::Tensor all = (s0.unsqueeze(2) + s1.unsqueeze(1)).reshape({x.size(0), 16});
    auto [top_scores, top] = all.topk(kK, 1);
    at::Tensor w = at::softmax(all.gather(1, top), 1);
    at::Tensor y = at::zeros_like(x);
    for (int e = 0; e < 16; ++e) {
      at::Tensor hit = (top == e);
      at::Tensor rows = hit.any(1).nonzero().squeeze(1);
      if (rows.numel() == 0) continue;
      at::Tensor we = (w * hit.to(w.scalar_type())).sum(1).index_select(0, rows);
      at::Tensor out = Ffn("ffn." + std::to_string(e / 4) + "." + std::to_string(e % 4),
                           x.index_select(0, rows));
      y = y.index_add(0, rows, we.unsqueeze(1) * out);
    }
    return y;
  }
};

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  if (!bench::ParseFlags(argc, argv, "[--smoke]", {}, &smoke)) return 2;
  const int steps = smoke ? 5 : 30;
  at::set_num_threads(1);
  auto dht_process = testing::StartDht({}, 30s);
  if (!dht_process.ok())
    return std::fprintf(stderr, "%s\n", dht_process.status().ToString().c_str()), 1;
  const std::string dht_address = dht_process->address;
  std::vector<std::vector<std::string>> flags;
  for (int s = 0; s < 4; ++s) {
    flags.push_back({"--experts", "ffn.[0:4]." + std::to_string(s), "--hidden-dim",
                     std::to_string(kDim), "--seed", "7", "--dht", dht_address, "--dht-listen",
                     "127.0.0.1:0", "--announce-every", "2", "--threads", "1"});
  }
  auto servers = testing::StartServers(flags, 120s);
  if (!servers.ok()) return std::fprintf(stderr, "%s\n", servers.status().ToString().c_str()), 1;

  dht::DhtOptions options;
  options.clock = &RealClock::Instance();
  options.listen = "127.0.0.1:0";
  options.bootstrap = {dht_address};
  options.node.client = true;
  options.node.get_quorum = 5;
  auto client = std::move(dht::Dht::Start(std::move(options))).value();
  client->WaitBootstrapped(10s).IgnoreError();
  std::vector<std::string> keys = {"prefix/ffn."};
  for (int i = 0; i < 4; ++i) keys.push_back("prefix/ffn." + std::to_string(i) + ".");
  testing::PollUntil(
      [&] {
        // Four coordinates per key; one coordinate may be announced by several servers, whose
        // records sit side by side (docs/protocol.md section 6).
        for (const auto& r : client->GetManyBlocking(keys, 2s)) {
          std::set<std::string> coordinates;
          for (const auto& rec : r.records) coordinates.insert(rec.subkey);
          if (coordinates.size() != 4) return false;
        }
        return true;
      },
      60s);

  auto swarm = std::make_shared<gating::Swarm>(client.get(), RealClock::Instance());
  const auto after_k_min = 200ms;
  gating::RemoteMixtureOfExperts moe(gating::RemoteMixtureOfExpertsOptions(kDim, {4, 4})
                                         .k_best(kK)
                                         .k_min(1)
                                         .timeout_after_k_min(after_k_min)
                                         .forward_timeout(10s)
                                         // With a server stopped, a token whose k experts all live
                                         // there gets zeros (counted) instead of failing the step.
                                         .allow_zero_outputs(true),
                                     swarm);
  LocalMixture local;
  std::vector<at::Tensor> gw, gb;
  for (auto& g : moe->gates()) {
    gw.push_back(g->weight.detach().clone().set_requires_grad(true));
    gb.push_back(g->bias.detach().clone().set_requires_grad(true));
  }
  at::manual_seed(0);
  // Each step returns its forward and backward milliseconds.
  struct Timing {
    double step_ms = 0, forward_ms = 0, backward_ms = 0;
    double first_ms = 0;  // the first warm-up step (connections, DHT cache, noticing a failure)
  };
  auto time_steps = [&](auto&& step) {
    Timing t;
    for (int i = 0; i < 2; ++i) {  // warm-up
      auto [f, b] = step();
      if (i == 0) t.first_ms = f + b;
    }
    for (int i = 0; i < steps; ++i) {
      auto [f, b] = step();
      t.forward_ms += f / steps;
      t.backward_ms += b / steps;
    }
    t.step_ms = t.forward_ms + t.backward_ms;
    return t;
  };
  auto ms_since = [](SteadyClock::time_point t) {
    return std::chrono::duration<double, std::milli>(SteadyClock::now() - t).count();
  };
  auto run_step = [&](auto&& forward) {
    at::Tensor x = at::randn({kBatch, kDim}).set_requires_grad(true);
    auto t0 = SteadyClock::now();
    at::Tensor loss = forward(x).pow(2).mean();
    const double f = ms_since(t0);
    t0 = SteadyClock::now();
    loss.backward();
    return std::pair<double, double>(f, ms_since(t0));
  };
  auto remote_step = [&] { return run_step([&](const at::Tensor& x) { return moe(x); }); };
  auto local_step = [&] {
    return run_step([&](const at::Tensor& x) { return local.Forward(gw, gb, x); });
  };
  // The like-for-like twin of a remote step: the remote backward also steps each used expert's
  // optimizer on its server.
  auto local_trained_step = [&] {
    auto t = local_step();
    const auto t0 = SteadyClock::now();
    local.StepExperts();
    t.second += ms_since(t0);
    return t;
  };
  const Timing local_t = time_steps(local_step);
  const Timing trained_t = time_steps(local_trained_step);
  const Timing remote_t = time_steps(remote_step);
  (*servers)[0].process->Signal(SIGSTOP);
  const Timing stopped_t = time_steps(remote_step);
  (*servers)[0].process->Signal(SIGCONT);
  const double local_ms = local_t.step_ms, remote_ms = remote_t.step_ms,
               stopped_ms = stopped_t.step_ms;
  const double ratio = remote_ms / local_ms;
  const double trained_ratio = remote_ms / trained_t.step_ms;
  const double stopped_goal =
      std::chrono::duration<double, std::milli>(after_k_min).count() + 1.25 * remote_ms;
  std::printf("moe_layer: 16 ffn experts d=%lld on 4 servers, k=%d, batch %lld, %d steps\n",
              static_cast<long long>(kDim), kK, static_cast<long long>(kBatch), steps);
  auto split = [](const Timing& t) {
    std::printf("  (forward %.2f + backward %.2f)\n", t.forward_ms, t.backward_ms);
  };
  std::printf("  local mixture          %8.2f ms/step", local_ms);
  split(local_t);
  std::printf("  local, experts stepped %8.2f ms/step", trained_t.step_ms);
  split(trained_t);
  std::printf(
      "  remote, healthy        %8.2f ms/step  ratio %.2f (goal <= 1.25); %.2f to local "
      "with the experts' Adam step",
      remote_ms, ratio, trained_ratio);
  split(remote_t);
  std::printf(
      "  remote, 1 of 4 stopped %8.2f ms/step  (goal <= %.1f = timeout_after_k_min + 1.25x "
      "healthy)",
      stopped_ms, stopped_goal);
  split(stopped_t);
  std::printf(
      "  first step after the stop (warm-up, not in the mean): %.0f ms; forward_timeout bounds it "
      "when a token's k experts all live on the stopped server\n",
      stopped_t.first_ms);
  std::printf("  answers per token %.2f, banned peers now %d\n", moe->stats().AnswersPerSample(),
              moe->stats().banned_peers);
  nlohmann::json j = {{"local_ms", local_ms},
                      {"remote_ms", remote_ms},
                      {"ratio", ratio},
                      {"local_trained_ms", trained_t.step_ms},
                      {"ratio_to_local_trained", trained_ratio},
                      {"stopped_ms", stopped_ms},
                      {"stopped_goal_ms", stopped_goal},
                      {"stopped_first_step_ms", stopped_t.first_ms},
                      {"local_forward_ms", local_t.forward_ms},
                      {"local_backward_ms", local_t.backward_ms},
                      {"remote_forward_ms", remote_t.forward_ms},
                      {"remote_backward_ms", remote_t.backward_ms},
                      {"steps", steps},
                      {"timeout_after_k_min_ms", after_k_min.count()}};
  Result<std::string> path = bench::WriteResult("moe_layer", j);
  if (!path.ok()) std::fprintf(stderr, "moe_layer: %s\n", path.status().message().c_str());
  client->Stop();
  return 0;
}
