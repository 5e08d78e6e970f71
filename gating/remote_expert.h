// RemoteExpert: one expert on one server as a torch module. forward(x) sends x [N, d] to the
// expert and returns its y; loss.backward() sends grad_y back (with step_seen), so the expert
// trains and x gets grad_x. The schema comes from GET /v1/experts/{uid}.
//
//   gating::RemoteExpert expert("ffn.0.1", "http://127.0.0.1:8000", swarm);
//   at::Tensor y = expert(x);
//
// Timeouts are measured on the swarm's clock (Swarm::clock()).
//
// Errors: forward throws std::runtime_error when the expert does not answer (in time, finite);
// a failing backward leaves grad_x zero. One thread at a time, as torch modules are.
#ifndef DMOE_GATING_REMOTE_EXPERT_H_
#define DMOE_GATING_REMOTE_EXPERT_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <chrono>
#include <memory>
#include <string>

#include "core/status.h"
#include "gating/swarm.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {

namespace internal {
struct Counters;
}  // namespace internal

// What GET /v1/experts/{uid} says about an expert.
struct ExpertInfo {
  std::string uid;
  std::string type;
  int64_t hidden_dim = 0;
  int64_t step = 0;
  int64_t params = 0;
};

// Blocking; kUnavailable/kDeadlineExceeded when the server does not answer, kNotFound when it
// does not host the uid, kInvalidArgument for an answer that is not such an object.
Result<ExpertInfo> FetchExpertInfo(const std::string& endpoint, const std::string& uid,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(5));

struct RemoteExpertOptions {
  std::chrono::milliseconds forward_timeout{5'000};
  std::chrono::milliseconds backward_timeout{10'000};
  safetensors::DType wire_dtype = safetensors::DType::kF32;
  bool detect_anomalies = true;
};

class RemoteExpertImpl : public torch::nn::Module {
 public:
  RemoteExpertImpl(std::string uid, std::string endpoint, std::shared_ptr<Swarm> swarm,
                   RemoteExpertOptions options = {});

  // x [N, d] -> y [N, d].
  at::Tensor forward(const at::Tensor& x);
  Result<ExpertInfo> info() const { return FetchExpertInfo(endpoint_, uid_); }

  const std::string& uid() const { return uid_; }
  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string uid_;
  std::string endpoint_;
  std::shared_ptr<Swarm> swarm_;
  RemoteExpertOptions options_;
  std::shared_ptr<internal::Counters> counters_;
  at::Tensor anchor_;
};

TORCH_MODULE(RemoteExpert);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_REMOTE_EXPERT_H_
