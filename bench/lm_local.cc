#include "bench/lm_local.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/identity.h"
#include "dht/dht.h"
#include "expert_server/process_memory.h"
#include "expert_server/server.h"
#include "net/buffer_pool.h"
#include "net/http_client.h"
#include "net/io_context.h"
#include "router/router.h"
#include "storage/expert_store.h"
#include "tests/testing/in_process_router.h"
#include "tests/testing/loopback_dht.h"
#include "tests/testing/process.h"

namespace dmoe::bench {

namespace {

using namespace std::chrono_literals;

// A DHT node of this process on loopback, joined to `bootstrap` (none: the first).
Result<std::unique_ptr<dht::Dht>> StartNode(Identity identity, std::vector<std::string> bootstrap) {
  const bool join = !bootstrap.empty();
  dht::DhtOptions o = testing::LoopbackDhtOptions(std::move(bootstrap));
  o.identity = std::move(identity);
  DMOE_ASSIGN_OR_RETURN(auto node, dht::Dht::Start(std::move(o)));
  if (join) DMOE_RETURN_IF_ERROR(node->WaitBootstrapped(10s));
  return node;
}

// Whether the router sees every hosted expert alive (GET /v1/swarm).
bool AllExpertsAlive(const std::string& router, size_t experts) {
  Result<net::Response> r = net::Fetch("GET", router + "/v1/swarm", {}, {}, 5s);
  if (!r.ok() || r->status != 200) return false;
  nlohmann::json j = nlohmann::json::parse(r->body_view(), nullptr, false);
  if (!j.is_object() || !j.contains("experts")) return false;
  size_t alive = 0;
  for (const auto& e : j["experts"]) alive += e.value("status", "") == "alive" ? 1 : 0;
  return alive >= experts;
}

}  // namespace

Status WithLocalSwarm(const LocalSwarmSpec& spec,
                      const std::function<void(const std::string& router_endpoint)>& serve) {
  const Clock& clock = RealClock::Instance();
  expert_server::SetComputeThreads(spec.compute_threads);
  net::BufferPool pool;
  net::IoContext io(2);
  std::atomic<uint64_t> calls{0};
  // The servers and the router of this process log as their processes did with --log-level error.
  spdlog::set_level(spdlog::level::err);
  // Declared in the order they start; they stop in the reverse one (the servers before their
  // nodes and stores, the router before its node).
  DMOE_ASSIGN_OR_RETURN(auto hub, StartNode(Identity::Generate(), {}));
  const std::vector<std::string> bootstrap = {hub->local_address()};
  std::vector<std::unique_ptr<storage::ExpertStore>> stores;
  std::vector<std::unique_ptr<dht::Dht>> nodes;
  std::vector<std::unique_ptr<expert_server::ExpertServer>> servers;
  std::unique_ptr<router::Router> router;
  auto stop = [&] {
    if (router) router->Stop();
    for (auto& s : servers) s->Stop();
    for (auto& n : nodes) n->Stop();
    for (auto& s : stores) s->Close().IgnoreError();
    hub->Stop();
  };
  auto started = [&]() -> Status {
    size_t experts = 0;
    std::map<std::string, gating::LocalEndpoint> local;
    for (size_t i = 0; i < spec.server_uids.size(); ++i) {
      DMOE_ASSIGN_OR_RETURN(auto store,
                            storage::ExpertStore::Open(spec.server_dbs[i], {.clock = &clock}));
      Identity identity = Identity::Generate();
      DMOE_ASSIGN_OR_RETURN(auto node, StartNode(identity, bootstrap));
      expert_server::ExpertServerOptions o;
      o.uids = spec.server_uids[i];
      o.clock = &clock;
      o.io = &io;
      o.buffer_pool = &pool;
      o.identity = identity;
      o.store = store.get();
      o.dht = node.get();
      o.expert.type = "ffn";
      o.expert.hidden_dim = spec.hidden_dim;
      stores.push_back(std::move(store));
      nodes.push_back(std::move(node));
      DMOE_ASSIGN_OR_RETURN(auto server, expert_server::ExpertServer::Start(std::move(o)));
      expert_server::ExpertServer* raw = server.get();
      local[server->endpoint()] = [raw, &pool, &calls](net::Bytes request,
                                                       std::function<void(net::Bytes)> answer) {
        ++calls;
        raw->CallLocal(request, std::move(answer));
        pool.Give(std::move(request));
      };
      experts += spec.server_uids[i].size();
      servers.push_back(std::move(server));
    }
    router::RouterOptions ro;
    ro.db_dir = spec.router_db;
    DMOE_ASSIGN_OR_RETURN(
        router, testing::StartInProcessRouter(std::move(ro), testing::LoopbackDhtOptions(bootstrap),
                                              std::move(local)));
    const std::string endpoint = router->endpoint();
    if (!testing::PollUntil([&] { return AllExpertsAlive(endpoint, experts); }, 60s, 200ms)) {
      return UnavailableError("the in-process router did not see all " + std::to_string(experts) +
                              " experts within 60 s");
    }
    serve(endpoint);
    // Evidence that the baseline is what it claims: every expert call skipped the network.
    std::printf("lm: in-process: %llu expert calls through ExpertServer::CallLocal\n",
                static_cast<unsigned long long>(calls.load()));
    return Status::Ok();
  }();
  stop();
  return started;
}

}  // namespace dmoe::bench
