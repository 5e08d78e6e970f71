// A swarm for the gating tests: a DHT bootstrap node and four expert servers in this process on
// loopback, hosting the ffn experts ffn.[0:4].[0:4] of width kDim, found through a real DHT; and
// the same experts built locally (LocalTwin, LocalFfn) to check answers against. The swarm is
// started once per test suite and never trains its experts (an SGD step of 1e-30).
#ifndef DMOE_TESTS_GATING_SWARM4X4_H_
#define DMOE_TESTS_GATING_SWARM4X4_H_

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "dht/dht.h"
#include "expert_server/expert.h"
#include "expert_server/server.h"
#include "gating/swarm.h"
#include "tests/testing/loopback_dht.h"

namespace dmoe::gating {

inline constexpr int64_t kDim = 16;
inline constexpr uint64_t kSeed = 7;
inline constexpr int kServers = 4;

// y = layer_norm(x + W2 gelu(W1 x + b1) + b2), with autograd, from the expert's own parameters.
inline at::Tensor LocalFfn(const expert_server::Expert& expert, const at::Tensor& x) {
  std::map<std::string, at::Tensor> p;
  for (auto& [name, t] : expert.Parameters()) p[name] = t.detach();
  at::Tensor h = at::gelu(at::linear(x, p["linear1.weight"], p["linear1.bias"]));
  at::Tensor y = x + at::linear(h, p["linear2.weight"], p["linear2.bias"]);
  return at::layer_norm(y, {kDim}, p["norm.weight"], p["norm.bias"], 1e-5);
}

inline std::unique_ptr<expert_server::Expert> LocalTwin(const std::string& uid) {
  expert_server::ExpertConfig config;
  config.hidden_dim = kDim;
  config.seed = kSeed;
  return std::move(expert_server::Expert::Create(expert_server::ExpertRegistry::WithBuiltins(), uid,
                                                 config, {}))
      .value();
}

// A DHT bootstrap node, four servers hosting ffn.s.[0:4] each (a 4x4 grid) with a DHT node each,
// wired as dmoe-server wires its own, and a client node.
class Swarm4x4 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::manual_seed(1);
    auto boot = dht::Dht::Start(testing::LoopbackDhtOptions());
    ASSERT_TRUE(boot.ok()) << boot.status().ToString();
    boot_ = std::move(boot).value().release();
    for (int s = 0; s < kServers; ++s) {
      const Identity identity = Identity::Generate();
      dht::DhtOptions node_options = testing::LoopbackDhtOptions({boot_->local_address()});
      node_options.identity = identity;
      auto node = dht::Dht::Start(std::move(node_options));
      ASSERT_TRUE(node.ok()) << node.status().ToString();
      server_nodes_.push_back(std::move(node).value().release());
      expert_server::ExpertServerOptions o;
      o.clock = &RealClock::Instance();
      o.identity = identity;
      o.dht = server_nodes_.back();
      for (int j = 0; j < 4; ++j)
        o.uids.push_back("ffn." + std::to_string(s) + "." + std::to_string(j));
      o.expert.hidden_dim = kDim;
      o.expert.seed = kSeed;
      // Backward still computes grad_x, but the weights stay put (an SGD step of 1e-30), so every
      // test of the suite can compare against freshly built local twins.
      o.optimizer.kind = expert_server::OptimizerKind::kSgd;
      o.optimizer.lr = 1e-30;  // must be positive; far below float resolution of the weights
      o.optimizer.weight_decay = 0.0;
      o.announce_every_s = 2;  // a put that raced the server's own DHT join is redone soon
      auto server = expert_server::ExpertServer::Start(std::move(o));
      ASSERT_TRUE(server.ok()) << server.status().ToString();
      servers_.push_back(std::move(server).value().release());
    }
    dht::DhtOptions client_options = testing::LoopbackDhtOptions({boot_->local_address()});
    client_options.node.client = true;
    // A get stops after this many nodes answered with records; a grid key's subkeys may be spread
    // over nodes that joined at different times, so ask every storing node (a gating client wants
    // complete subkey sets more than it wants the fastest get).
    client_options.node.get_quorum = 5;
    auto client = dht::Dht::Start(std::move(client_options));
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(client).value().release();
    ASSERT_TRUE(client_->WaitBootstrapped(std::chrono::seconds(10)).ok());
    // Announcements are asynchronous: poll the DHT (never sleep) until all 16 are visible.
    // Every key of the grid must be complete: prefix/ffn. and prefix/ffn.i. with 4 subkeys each.
    std::vector<std::string> keys = {"prefix/ffn."};
    for (int i = 0; i < 4; ++i) keys.push_back("prefix/ffn." + std::to_string(i) + ".");
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        keys.push_back("expert/ffn." + std::to_string(i) + "." + std::to_string(j));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool all = false;
    std::string missing;
    while (!all && std::chrono::steady_clock::now() < deadline) {
      all = true;
      missing.clear();
      for (const auto& r : client_->GetManyBlocking(keys, std::chrono::seconds(2))) {
        if (r.records.size() != (r.key.rfind("prefix/", 0) == 0 ? 4u : 1u)) {
          all = false;
          missing += " " + r.key + "(" + std::to_string(r.records.size()) + ")";
        }
      }
    }
    ASSERT_TRUE(all) << "the servers' announcements never became visible:" << missing;
  }
  static void TearDownTestSuite() {
    for (auto* s : servers_) {
      s->Stop();
      delete s;
    }
    servers_.clear();
    for (auto* node : server_nodes_) {
      node->Stop();
      delete node;
    }
    server_nodes_.clear();
    if (client_) client_->Stop();
    delete client_;
    client_ = nullptr;
    if (boot_) boot_->Stop();
    delete boot_;
    boot_ = nullptr;
  }

  // Real servers answer in real time: the swarm runs on the real clock.
  std::shared_ptr<Swarm> MakeSwarm() {
    return std::make_shared<Swarm>(client_, RealClock::Instance());
  }

  static inline dht::Dht* boot_ = nullptr;
  static inline dht::Dht* client_ = nullptr;
  static inline std::vector<expert_server::ExpertServer*> servers_;
  static inline std::vector<dht::Dht*> server_nodes_;  // servers_[i] announces through node i
};

}  // namespace dmoe::gating

#endif  // DMOE_TESTS_GATING_SWARM4X4_H_
