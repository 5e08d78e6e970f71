// dmoe::gating: the client side of the decentralized mixture of experts. Open this first.
//
//   auto dht = dht::Dht::Start({.bootstrap = {"10.0.0.5:7000"}, .node = {.client = true}});
//   auto swarm = std::make_shared<gating::Swarm>(dht->get());   // DHT cache, connections, bans
//   gating::RemoteMixtureOfExperts moe(
//       gating::RemoteMixtureOfExpertsOptions(256, {16, 16}).k_best(4).k_min(2), swarm);
//   at::Tensor y = moe(x);                       // x [N, d] or [B, T, d], token-level routing
//   (loss(y) + moe->balance_loss()).backward();  // gating, x, and the remote experts
//   moe->stats().AnswersPerSample();             // for the progress line
//
// What lives where:
//   gating/beam_search.h   ExpertDirectory (DHT records cached until they expire) and BeamSearch
//                          (exact top-k live experts over the grid, one batched get per round)
//   gating/remote_call.h   ExpertCaller (pooled WebSocket per endpoint, answers matched by id),
//                          PeerHealth (latency EWMA, failures, bans with backoff), Swarm
//   gating/remote_expert.h RemoteExpert: one remote expert as a torch module
//   gating/remote_moe.h    RemoteMixtureOfExperts: k_best/k_min, timeouts, exclusion of failed or
//                          NaN experts, renormalized weights, backward only to responders
#ifndef DMOE_GATING_GATING_H_
#define DMOE_GATING_GATING_H_

#include "gating/beam_search.h"
#include "gating/remote_call.h"
#include "gating/remote_expert.h"
#include "gating/remote_moe.h"

#endif  // DMOE_GATING_GATING_H_
