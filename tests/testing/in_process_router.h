// StartInProcessRouter: a router::Router in the test's own process, wired as dmoe-router's main
// wires it (router/main.cc): its own buffer pool, one network thread, the real clock and a DHT
// client node with the router's identity. Header-only, so that only tests that start a router link
// the router, the DHT and net.
#ifndef DMOE_TESTS_TESTING_IN_PROCESS_ROUTER_H_
#define DMOE_TESTS_TESTING_IN_PROCESS_ROUTER_H_

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "dht/dht.h"
#include "gating/expert_caller.h"
#include "net/buffer_pool.h"
#include "net/io_context.h"
#include "router/router.h"
#include "tests/testing/loopback_dht.h"

namespace dmoe::testing {

namespace internal {

// The router and what it borrows, stopped and freed in the right order: router, DHT, threads, pool.
class InProcessRouter final : public router::Router {
 public:
  ~InProcessRouter() override { Stop(); }
  std::string endpoint() const override { return router_->endpoint(); }
  uint16_t port() const override { return router_->port(); }
  std::string peer_id() const override { return router_->peer_id(); }
  void Stop() override {
    if (router_) router_->Stop();
    if (dht_) dht_->Stop();
  }

  net::BufferPool pool_;
  net::IoContext net_io_{1};
  std::unique_ptr<dht::Dht> dht_;
  std::unique_ptr<router::Router> router_;
};

}  // namespace internal

// Starts the DHT node (`dht_options`, always a client node, whose identity becomes
// options.identity, a fresh one when neither is set), waits up to 5 s for it to join its bootstrap
// nodes as dmoe-router does, and then starts the router on it, with `local_experts` as its
// RouterContext::local_experts. The errors of dht::Dht::Start and router::Router::Start.
inline Result<std::unique_ptr<router::Router>> StartInProcessRouter(
    router::RouterOptions options, dht::DhtOptions dht_options = LoopbackDhtOptions(),
    std::map<std::string, gating::LocalEndpoint> local_experts = {}) {
  auto wired = std::make_unique<internal::InProcessRouter>();
  if (!options.identity) options.identity = dht_options.identity.value_or(Identity::Generate());
  dht_options.identity = options.identity;
  dht_options.node.client = true;
  const bool join = !dht_options.bootstrap.empty();
  DMOE_ASSIGN_OR_RETURN(wired->dht_, dht::Dht::Start(std::move(dht_options)));
  if (join) (void)wired->dht_->WaitBootstrapped(std::chrono::seconds(5));  // Keeps trying after.
  DMOE_ASSIGN_OR_RETURN(
      wired->router_,
      router::Router::Start(std::move(options), {.clock = &RealClock::Instance(),
                                                 .buffer_pool = &wired->pool_,
                                                 .net_io = &wired->net_io_,
                                                 .dht = wired->dht_.get(),
                                                 .local_experts = std::move(local_experts)}));
  return std::unique_ptr<router::Router>(std::move(wired));
}

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_IN_PROCESS_ROUTER_H_
