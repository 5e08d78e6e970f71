#include "expert_server/optimizer.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <cmath>
#include <map>

namespace dmoe::expert_server {

Status ValidateOptimizerOptions(const OptimizerOptions& o) {
  if (o.kind != "adam" && o.kind != "sgd") {
    return InvalidArgumentError("optimizer '" + o.kind + "' is unknown (allowed: adam, sgd)");
  }
  if (!(o.lr > 0) || !std::isfinite(o.lr)) {
    return InvalidArgumentError("learning rate must be a positive number, got " +
                                std::to_string(o.lr));
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
    return InvalidArgumentError("betas must be in [0, 1)");
  }
  if (!(o.weight_decay >= 0) || !(o.clip_grad_norm >= 0) || o.warmup_steps < 0) {
    return InvalidArgumentError("weight decay, gradient clipping and warmup must not be negative");
  }
  return Status::Ok();
}

Optimizer::Optimizer(std::vector<std::pair<std::string, at::Tensor>> params,
                     OptimizerOptions options)
    : options_(std::move(options)) {
  for (auto& [name, p] : params) {
    Slot slot{name, p, at::zeros_like(p), {}};
    if (options_.kind == "adam") slot.v = at::zeros_like(p);
    slots_.push_back(std::move(slot));
  }
}

double Optimizer::CurrentLr() const {
  if (options_.warmup_steps <= 0 || step_ >= options_.warmup_steps) return options_.lr;
  return options_.lr * static_cast<double>(step_ + 1) / static_cast<double>(options_.warmup_steps);
}

bool Optimizer::GradientsFinite() const {
  for (const Slot& s : slots_) {
    const at::Tensor& g = s.param.grad();
    if (g.defined() && !at::isfinite(g).all().item<bool>()) return false;
  }
  return true;
}

void Optimizer::ZeroGrad() {
  for (Slot& s : slots_) {
    if (s.param.grad().defined()) s.param.mutable_grad().reset();
  }
}

void Optimizer::Step() {
  torch::NoGradGuard no_grad;
  const double lr = CurrentLr();
  double clip_scale = 1.0;
  if (options_.clip_grad_norm > 0) {
    double total_sq = 0;
    for (const Slot& s : slots_) {
      if (s.param.grad().defined()) total_sq += s.param.grad().pow(2).sum().item<double>();
    }
    double norm = std::sqrt(total_sq);
    if (norm > options_.clip_grad_norm) clip_scale = options_.clip_grad_norm / (norm + 1e-6);
  }
  ++step_;
  for (Slot& s : slots_) {
    if (!s.param.grad().defined()) continue;
    at::Tensor g = s.param.grad();
    if (clip_scale != 1.0) g = g * clip_scale;
    if (options_.weight_decay > 0) s.param.mul_(1.0 - lr * options_.weight_decay);
    if (options_.kind == "adam") {
      s.m.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
      s.v.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
      double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
      double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
      at::Tensor denom = (s.v / bias2).sqrt_().add_(options_.eps);
      s.param.addcdiv_(s.m, denom, -lr / bias1);
    } else if (options_.beta1 > 0) {
      s.m.mul_(options_.beta1).add_(g);
      s.param.add_(s.m, -lr);
    } else {
      s.param.add_(g, -lr);
    }
  }
  ZeroGrad();
}

std::vector<std::pair<std::string, at::Tensor>> Optimizer::State() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const Slot& s : slots_) {
    out.emplace_back("optim/" + s.name + "/m", s.m);
    if (s.v.defined()) out.emplace_back("optim/" + s.name + "/v", s.v);
  }
  out.emplace_back("optim/step", at::scalar_tensor(step_, at::kLong));
  return out;
}

Status Optimizer::LoadState(const std::vector<std::pair<std::string, at::Tensor>>& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  auto step_it = by_name.find("optim/step");
  if (step_it == by_name.end() || step_it->second.numel() != 1) {
    return InvalidArgumentError("optimizer state lacks optim/step");
  }
  // Check everything before changing anything.
  for (const Slot& s : slots_) {
    for (const char* slot : {"m", "v"}) {
      if (std::string(slot) == "v" && !s.v.defined()) continue;
      auto it = by_name.find("optim/" + s.name + "/" + slot);
      if (it == by_name.end()) {
        return InvalidArgumentError("optimizer state lacks optim/" + s.name + "/" + slot);
      }
      if (it->second.sizes() != s.param.sizes()) {
        return InvalidArgumentError("optimizer state optim/" + s.name + "/" + slot +
                                    " has the wrong shape");
      }
    }
  }
  torch::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    s.m.copy_(by_name["optim/" + s.name + "/m"]);
    if (s.v.defined()) s.v.copy_(by_name["optim/" + s.name + "/v"]);
  }
  step_ = step_it->second.to(at::kLong).item<int64_t>();
  return Status::Ok();
}

}  // namespace dmoe::expert_server
