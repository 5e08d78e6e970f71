// Internal to gating: one round of remote expert calls for a batch, and the autograd function that
// sends gradients back to the experts that answered. Used by remote_moe.cc and remote_expert.cc.
//
// Math. For sample i with answering experts e and gate weights w_ie (softmax over responders),
// y_i = sum_e w_ie f_e(x_i). The function here only produces Y[i, slot] = f_e(x_i) (zeros where
// no answer came); the weighting happens in plain autograd ops, so backward hands us
// grad_Y[i, slot] = w_ie g_i, which is exactly the grad_y each expert must see, and the gating
// gradient (through w, using the f_e(x_i) kept in Y) is computed locally by autograd.
//
// Threads: everything here runs on the caller's thread (forward) or the autograd engine's thread
// (backward, the thread that called loss.backward() for CPU tensors); both block on a condition
// variable while io threads deliver answers.
//
// Time: a round's timeouts are measured on the swarm's clock (Swarm::clock()); the waits between
// answers run in real time (RealTimeBound) and then read that clock again.
#ifndef DMOE_GATING_DISPATCH_H_
#define DMOE_GATING_DISPATCH_H_

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tensor/safetensors.h"

namespace dmoe::gating {
class Swarm;
}  // namespace dmoe::gating

namespace dmoe::gating::internal {

// Counters shared by a layer and its pending backward passes.
struct Counters {
  std::atomic<int64_t> forward_passes{0}, samples{0}, requests{0}, answered{0}, timed_out{0},
      failed{0}, nonfinite{0}, zero_output_samples{0}, answers{0}, backward_requests{0},
      backward_answered{0}, backward_failed{0}, backward_timed_out{0};
};

struct ExpertCall {
  std::string uid;
  std::string endpoint;
  std::vector<int64_t> rows;   // samples sent to this expert
  std::vector<int64_t> slots;  // the slot of this expert in each sample's list
  at::Tensor x_wire;           // those samples in the wire dtype
  int64_t step = -1;           // the expert's step in its forward answer
  bool answered = false;
};

struct WaitPolicy {
  int k_min = 1;
  std::chrono::milliseconds timeout{5000};  // from the start of the round
  std::chrono::milliseconds after_k_min{1000};
  bool detect_anomalies = true;
};

// Everything one forward round leaves for its backward. Owned through an intrusive_ptr by the
// autograd graph.
struct DispatchState : torch::CustomClassHolder {
  std::shared_ptr<Swarm> swarm;
  std::shared_ptr<Counters> counters;
  safetensors::DType wire_dtype = safetensors::DType::kF32;
  int64_t n = 0, k = 0, d = 0;
  std::vector<ExpertCall> calls;
  at::Tensor y;         // [n, k, d] float: expert outputs, zeros where none came
  at::Tensor answered;  // [n, k] bool
  at::ScalarType input_dtype = at::kFloat;
  WaitPolicy backward_policy;
};

// Sends every call's x (forward) at once and waits per `policy`; fills y, answered and the calls'
// step/answered; updates peer health and counters. Unanswered calls are forgotten.
void RunForward(DispatchState& state, const at::Tensor& x_flat, const WaitPolicy& policy);

// Applies the autograd function: returns state.y as [n, k, d], whose gradient is sent to the
// experts that answered. `anchor` is a tensor that requires grad (so the backward runs even when
// x does not).
at::Tensor ApplyRemote(const at::Tensor& anchor, const at::Tensor& x_flat,
                       c10::intrusive_ptr<DispatchState> state);

}  // namespace dmoe::gating::internal

#endif  // DMOE_GATING_DISPATCH_H_
