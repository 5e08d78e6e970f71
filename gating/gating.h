// dmoe::gating: the client side of the decentralized mixture of experts. Open this first.
//
//   auto dht = dht::Dht::Start({.bootstrap = {"10.0.0.5:7000"}, .node = {.client = true}});
//   auto swarm = std::make_shared<gating::Swarm>(dht->get(), clock);  // cache, connections, bans
//   gating::RemoteMixtureOfExperts moe(
//       gating::RemoteMixtureOfExpertsOptions(256, {16, 16}).k_best(4).k_min(2), swarm);
//   at::Tensor y = moe(x);                       // x [N, d] or [B, T, d], token-level routing
//   (loss(y) + moe->balance_loss()).backward();  // gating, x, and the remote experts
//   moe->stats().AnswersPerSample();             // for the progress line
//
// `clock` is the process's Clock (core/clock.h), passed down from where the process is wired; the
// swarm and every layer on it measure deadlines, bans and cache expiry on it, so tests drive them
// with a FakeClock.
//
// What lives where:
//   gating/beam_search.h   ExpertDirectory (DHT records cached until they expire) and BeamSearch
//                          (exact top-k live experts over the grid, one batched get per round)
//   gating/peer_health.h   PeerHealth: latency EWMA, failed rounds, bans with backoff, probes
//   gating/expert_caller.h ExpertCaller: pooled WebSocket per endpoint, answers matched by id;
//                          health probes and proofs of key
//   gating/swarm.h         Swarm: what a trainer's layers share (directory, health, caller, clock)
//                          and the trust policy (replicas used once their endpoint proved its key)
//   gating/remote_expert.h RemoteExpert: one remote expert as a torch module
//   gating/remote_moe.h    RemoteMixtureOfExperts: k_best/k_min, timeouts, exclusion of failed or
//                          NaN experts, renormalized weights, backward only to responders
#ifndef DMOE_GATING_GATING_H_
#define DMOE_GATING_GATING_H_

#include "gating/beam_search.h"
#include "gating/expert_caller.h"
#include "gating/peer_health.h"
#include "gating/remote_expert.h"
#include "gating/remote_moe.h"
#include "gating/swarm.h"

#endif  // DMOE_GATING_GATING_H_
