#include "expert_server/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/utils.h>

#include <cmath>
#include <limits>
#include <map>

#include "core/lr_schedule.h"

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
  if (!(o.weight_decay >= 0) || !(o.clip_grad_norm >= 0) || o.warmup_steps < 0 ||
      o.decay_steps < 0) {
    return InvalidArgumentError(
        "weight decay, gradient clipping, warmup and decay steps must not be negative");
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
  if (options_.warmup_steps > 0 && step_ < options_.warmup_steps) {
    return options_.lr * static_cast<double>(step_ + 1) /
           static_cast<double>(options_.warmup_steps);
  }
  return CosineDecay(options_.lr, step_ - std::max<int64_t>(0, options_.warmup_steps),
                     options_.decay_steps);
}

namespace {

// Float tensors the fused loops below can walk as plain arrays.
bool PlainFloat(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu();
}

constexpr int64_t kGrain = 1 << 15;  // elements per task of at::parallel_for

// One pass over p, g, m and v. Adam as eight at:: ops read and wrote each tensor eight times and
// allocated two temporaries: for an ffn d=256 expert at batch 16 that was 2.7 of the 3.6 ms of a
// backward call. The arithmetic is the same, in the same order, as the at:: form kept below for
// other dtypes and layouts.
struct AdamScalars {
  float clip, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, bias2, eps, step_size;
};

void FusedAdam(float* __restrict p, const float* __restrict g, float* __restrict m,
               float* __restrict v, int64_t n, const AdamScalars& k) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float gi = g[i] * k.clip;
      const float pi = p[i] * k.decay;
      const float mi = m[i] * k.beta1 + k.one_minus_beta1 * gi;
      const float vi = v[i] * k.beta2 + k.one_minus_beta2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = pi + k.step_size * mi / (std::sqrt(vi / k.bias2) + k.eps);
    }
  });
}

}  // namespace

bool Optimizer::GradientsFinite() const {
  for (const Slot& s : slots_) {
    const at::Tensor& g = s.param.grad();
    if (!g.defined()) continue;
    if (!PlainFloat(g)) {
      if (!at::isfinite(g).all().item<bool>()) return false;
      continue;
    }
    const float* d = g.data_ptr<float>();
    const int64_t n = g.numel();
    bool finite = true;
    // |x| <= max is false for NaN and for +-Inf; no early exit, so the loop vectorizes.
    for (int64_t i = 0; i < n; ++i) finite &= std::fabs(d[i]) <= std::numeric_limits<float>::max();
    if (!finite) return false;
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
  const double decay = 1.0 - lr * options_.weight_decay;
  for (Slot& s : slots_) {
    if (!s.param.grad().defined()) continue;
    at::Tensor g = s.param.grad();
    if (options_.kind == "adam") {
      double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
      double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
      if (PlainFloat(s.param) && PlainFloat(g) && PlainFloat(s.m) && PlainFloat(s.v)) {
        const AdamScalars k{
            static_cast<float>(clip_scale),     static_cast<float>(decay),
            static_cast<float>(options_.beta1), static_cast<float>(1.0 - options_.beta1),
            static_cast<float>(options_.beta2), static_cast<float>(1.0 - options_.beta2),
            static_cast<float>(bias2),          static_cast<float>(options_.eps),
            static_cast<float>(-lr / bias1)};
        FusedAdam(s.param.data_ptr<float>(), g.data_ptr<float>(), s.m.data_ptr<float>(),
                  s.v.data_ptr<float>(), s.param.numel(), k);
        continue;
      }
      if (clip_scale != 1.0) g = g * clip_scale;
      if (options_.weight_decay > 0) s.param.mul_(decay);
      s.m.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
      s.v.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
      at::Tensor denom = (s.v / bias2).sqrt_().add_(options_.eps);
      s.param.addcdiv_(s.m, denom, -lr / bias1);
      continue;
    }
    if (clip_scale != 1.0) g = g * clip_scale;
    if (options_.weight_decay > 0) s.param.mul_(decay);
    if (options_.beta1 > 0) {
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
