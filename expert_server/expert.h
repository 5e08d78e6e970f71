// Experts: the torch modules a server hosts, the registry that makes them by type name, and the
// Expert object that pairs a module with its optimizer and step count.
//
// An Expert is not thread-safe: it belongs to the compute runtime, which calls it from its own
// thread(s) one batch at a time. Network threads never touch it.
#ifndef DMOE_EXPERT_SERVER_EXPERT_H_
#define DMOE_EXPERT_SERVER_EXPERT_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "expert_server/optimizer.h"
#include "expert_server/options.h"

namespace dmoe::expert_server {

// A module an expert server can host. Forward maps x [B, d] (input_rank 2) or [B, T, d]
// (input_rank 3, with an optional BOOL mask [B, T], true = a real token) to y of the same shape.
class ExpertModule : public torch::nn::Module {
 public:
  virtual at::Tensor Forward(const at::Tensor& x, const std::optional<at::Tensor>& mask) = 0;
  virtual int64_t input_rank() const = 0;
};

using ExpertFactory = std::function<std::shared_ptr<ExpertModule>(const ExpertConfig&)>;

// Expert types by name. WithBuiltins() knows "ffn" and "transformer"; a C++ user adds a type with
// Register before the server starts. Not thread-safe while being modified.
class ExpertRegistry {
 public:
  static ExpertRegistry WithBuiltins();
  // kInvalidArgument when the name is taken or empty.
  Status Register(const std::string& type, ExpertFactory factory);
  // kInvalidArgument for an unknown type (naming the known ones) or a factory that throws.
  Result<std::shared_ptr<ExpertModule>> Create(const ExpertConfig& config) const;
  std::vector<std::string> Types() const;

 private:
  std::map<std::string, ExpertFactory> factories_;
};

// A named tensor of an expert's state: "param/<name>" for weights, "optim/<name>/<slot>" for
// optimizer state.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One hosted expert: module, optimizer, step.
// Whether every element of `t` is finite (no NaN, no Inf): what an expert and its runtime check
// before a gradient may change a weight.
bool AllFinite(const at::Tensor& t);

class Expert {
 public:
  static Result<std::unique_ptr<Expert>> Create(const ExpertRegistry& registry, std::string uid,
                                                const ExpertConfig& config,
                                                const OptimizerOptions& optimizer);

  // Checks an input against the expert's schema: rank, width, dtype (F32, F16 or BF16), B >= 1,
  // 1 <= T <= max_seq_len, mask shape and dtype. kInvalidArgument naming what is wrong.
  Status CheckInput(const at::Tensor& x, const std::optional<at::Tensor>& mask) const;

  // y for x, in the dtype of x. No gradient is recorded.
  Result<at::Tensor> Forward(const at::Tensor& x, const std::optional<at::Tensor>& mask);

  // Re-runs forward with autograd on x, returns grad_x (dtype of x) and steps the optimizer.
  // NaN/Inf in x or grad_y, or a non-finite gradient, is refused with kInvalidArgument and the
  // weights and step stay exactly as they were.
  Result<at::Tensor> Backward(const at::Tensor& x, const at::Tensor& grad_y,
                              const std::optional<at::Tensor>& mask);

  const std::string& uid() const { return uid_; }
  const ExpertConfig& config() const { return config_; }
  int64_t step() const { return optimizer_->step(); }
  int64_t num_parameters() const;
  // What a request costs in the runtime's queue: samples (B) for [B, d] experts, tokens (B * T)
  // for sequence experts.
  int64_t QueueCost(const at::Tensor& x) const;
  // Parameter names and tensors, as the module names them ("linear1.weight", ...).
  NamedTensors Parameters() const;

  // Everything a checkpoint needs: parameters and optimizer state (see NamedTensors).
  NamedTensors StateTensors() const;
  // Restores StateTensors() output; kInvalidArgument when a name or shape does not match, in
  // which case nothing is changed.
  Status LoadStateTensors(const NamedTensors& state);

 private:
  Expert() = default;
  std::string uid_;
  ExpertConfig config_;
  std::shared_ptr<ExpertModule> module_;
  std::unique_ptr<Optimizer> optimizer_;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_EXPERT_H_
