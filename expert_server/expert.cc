#include "expert_server/expert.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/utils.h>

#include <cmath>
#include <mutex>

#include "core/identity.h"

namespace dmoe::expert_server {
namespace {

// y = norm(x + linear2(gelu(linear1(x)))), exact (erf) GELU, hidden width 4d.
class FfnModule : public ExpertModule {
 public:
  explicit FfnModule(int64_t d)
      : linear1_(register_module("linear1", torch::nn::Linear(d, 4 * d))),
        linear2_(register_module("linear2", torch::nn::Linear(4 * d, d))),
        norm_(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))) {}

  at::Tensor Forward(const at::Tensor& x, const std::optional<at::Tensor>&) override {
    return norm_(x + linear2_(at::gelu(linear1_(x))));
  }
  int64_t input_rank() const override { return 2; }

 private:
  torch::nn::Linear linear1_;
  torch::nn::Linear linear2_;
  torch::nn::LayerNorm norm_;
};

// Multi-head self-attention: one fused q/k/v projection and an output projection.
class AttentionModule : public torch::nn::Module {
 public:
  AttentionModule(int64_t d, int64_t heads)
      : heads_(heads),
        qkv_(register_module("qkv", torch::nn::Linear(d, 3 * d))),
        out_(register_module("out", torch::nn::Linear(d, d))) {}

  // mask: BOOL [B, T], true = a real token that others may attend to.
  at::Tensor Forward(const at::Tensor& x, const std::optional<at::Tensor>& mask) {
    const int64_t b = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads_;
    at::Tensor qkv = qkv_(x).view({b, t, 3, heads_, dh}).permute({2, 0, 3, 1, 4});
    at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];  // [B, H, T, dh]
    at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
    if (mask.has_value()) {
      // A large negative rather than -inf keeps a fully masked row finite (uniform attention).
      at::Tensor keep = mask->view({b, 1, 1, t});
      scores = scores.masked_fill(keep.logical_not(), -1e9);
    }
    at::Tensor o = at::matmul(at::softmax(scores, -1), v).transpose(1, 2).reshape({b, t, d});
    return out_(o);
  }

 private:
  int64_t heads_;
  torch::nn::Linear qkv_;
  torch::nn::Linear out_;
};

// One pre-norm encoder block: h = x + attn(norm1(x)), then the ffn above on h.
class TransformerModule : public ExpertModule {
 public:
  TransformerModule(int64_t d, int64_t heads)
      : norm1_(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        attn_(register_module("attn", std::make_shared<AttentionModule>(d, heads))),
        ffn_(register_module("ffn", std::make_shared<FfnModule>(d))) {}

  at::Tensor Forward(const at::Tensor& x, const std::optional<at::Tensor>& mask) override {
    return ffn_->Forward(x + attn_->Forward(norm1_(x), mask), std::nullopt);
  }
  int64_t input_rank() const override { return 3; }

 private:
  torch::nn::LayerNorm norm1_;
  std::shared_ptr<AttentionModule> attn_;
  std::shared_ptr<FfnModule> ffn_;
};

bool IsWireFloat(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

std::string ShapeString(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Torch's default initializers draw from the global generator; this lock keeps a seeded creation
// from interleaving with another.
std::mutex& SeedMutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

bool AllFinite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

ExpertRegistry ExpertRegistry::WithBuiltins() {
  ExpertRegistry r;
  r.Register("ffn", [](const ExpertConfig& c) {
     return std::make_shared<FfnModule>(c.hidden_dim);
   }).IgnoreError();
  r.Register("transformer", [](const ExpertConfig& c) {
     int64_t heads = c.num_heads > 0 ? c.num_heads : std::max<int64_t>(1, c.hidden_dim / 64);
     return std::make_shared<TransformerModule>(c.hidden_dim, heads);
   }).IgnoreError();
  return r;
}

Status ExpertRegistry::Register(const std::string& type, ExpertFactory factory) {
  if (type.empty()) return InvalidArgumentError("expert type name is empty");
  if (!factories_.emplace(type, std::move(factory)).second) {
    return InvalidArgumentError("expert type '" + type + "' is already registered");
  }
  return Status::Ok();
}

std::vector<std::string> ExpertRegistry::Types() const {
  std::vector<std::string> out;
  for (const auto& [name, f] : factories_) out.push_back(name);
  return out;
}

Result<std::shared_ptr<ExpertModule>> ExpertRegistry::Create(const ExpertConfig& config) const {
  auto it = factories_.find(config.type);
  if (it == factories_.end()) {
    std::string known;
    for (const auto& t : Types()) known += (known.empty() ? "" : ", ") + t;
    return InvalidArgumentError("expert type '" + config.type + "' is unknown (known: " + known +
                                ")");
  }
  if (config.hidden_dim < 1 || config.hidden_dim > 65536) {
    return InvalidArgumentError("hidden_dim must be in 1..65536, got " +
                                std::to_string(config.hidden_dim));
  }
  if (config.type == "transformer") {
    int64_t heads =
        config.num_heads > 0 ? config.num_heads : std::max<int64_t>(1, config.hidden_dim / 64);
    if (config.hidden_dim % heads != 0) {
      return InvalidArgumentError("hidden_dim " + std::to_string(config.hidden_dim) +
                                  " is not divisible by " + std::to_string(heads) + " heads");
    }
  }
  try {
    std::lock_guard<std::mutex> lock(SeedMutex());
    torch::manual_seed(config.seed);
    std::shared_ptr<ExpertModule> module = it->second(config);
    if (!module) return InternalError("factory for '" + config.type + "' returned no module");
    return module;
  } catch (const std::exception& e) {
    return InvalidArgumentError("cannot create expert of type '" + config.type + "': " + e.what());
  }
}

Result<std::unique_ptr<Expert>> Expert::Create(const ExpertRegistry& registry, std::string uid,
                                               const ExpertConfig& config,
                                               const OptimizerOptions& optimizer) {
  DMOE_RETURN_IF_ERROR(ValidateOptimizerOptions(optimizer));
  ExpertConfig seeded = config;
  // Each expert of a server gets its own initialization from (seed, uid).
  Hash256 h = Blake2b256(std::to_string(config.seed) + "/" + uid);
  uint64_t s = 0;
  for (int i = 0; i < 8; ++i) s = s << 8 | h[i];
  seeded.seed = s;
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<ExpertModule> module, registry.Create(seeded));
  std::unique_ptr<Expert> e(new Expert());
  e->uid_ = std::move(uid);
  e->config_ = config;
  e->module_ = std::move(module);
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& item : e->module_->named_parameters())
    params.emplace_back(item.key(), item.value());
  e->optimizer_ = std::make_unique<Optimizer>(std::move(params), optimizer);
  return e;
}

Status Expert::CheckInput(const at::Tensor& x, const std::optional<at::Tensor>& mask) const {
  const int64_t rank = module_->input_rank();
  if (x.dim() != rank) {
    return InvalidArgumentError("x has shape " + ShapeString(x) + " but expert " + uid_ +
                                " takes " + (rank == 2 ? "[B, " : "[B, T, ") +
                                std::to_string(config_.hidden_dim) + "]");
  }
  if (x.size(-1) != config_.hidden_dim) {
    return InvalidArgumentError("x has width " + std::to_string(x.size(-1)) + " but expert " +
                                uid_ + " has hidden_dim " + std::to_string(config_.hidden_dim));
  }
  if (x.size(0) < 1 || (rank == 3 && x.size(1) < 1)) {
    return InvalidArgumentError("x has shape " + ShapeString(x) + ": the batch must not be empty");
  }
  if (rank == 3 && x.size(1) > config_.max_seq_len) {
    return InvalidArgumentError("x has sequence length " + std::to_string(x.size(1)) +
                                " but expert " + uid_ + " takes at most " +
                                std::to_string(config_.max_seq_len) + " tokens (--max-seq-len)");
  }
  if (!IsWireFloat(x.scalar_type())) {
    return InvalidArgumentError(std::string("x has dtype ") + c10::toString(x.scalar_type()) +
                                "; allowed: F32, F16, BF16");
  }
  if (mask.has_value()) {
    if (rank != 3) return InvalidArgumentError("mask is only accepted by sequence experts");
    if (mask->scalar_type() != at::kBool || mask->dim() != 2 || mask->size(0) != x.size(0) ||
        mask->size(1) != x.size(1)) {
      return InvalidArgumentError("mask must be BOOL [B, T] = [" + std::to_string(x.size(0)) +
                                  ", " + std::to_string(x.size(1)) + "], got " +
                                  ShapeString(*mask));
    }
  }
  return Status::Ok();
}

int64_t Expert::QueueCost(const at::Tensor& x) const {
  return x.dim() == 3 ? x.size(0) * x.size(1) : x.size(0);
}

Result<at::Tensor> Expert::Forward(const at::Tensor& x, const std::optional<at::Tensor>& mask) {
  DMOE_RETURN_IF_ERROR(CheckInput(x, mask));
  try {
    torch::NoGradGuard no_grad;
    at::Tensor y = module_->Forward(x.to(at::kFloat), mask);
    return y.to(x.scalar_type());
  } catch (const std::exception& e) {
    return InternalError("forward of " + uid_ + " failed: " + e.what());
  }
}

Result<at::Tensor> Expert::Backward(const at::Tensor& x, const at::Tensor& grad_y,
                                    const std::optional<at::Tensor>& mask) {
  DMOE_RETURN_IF_ERROR(CheckInput(x, mask));
  if (grad_y.sizes() != x.sizes() || grad_y.scalar_type() != x.scalar_type()) {
    return InvalidArgumentError("grad_y must have the shape and dtype of y: " + ShapeString(x) +
                                " " + c10::toString(x.scalar_type()) + ", got " +
                                ShapeString(grad_y) + " " + c10::toString(grad_y.scalar_type()));
  }
  if (!AllFinite(x)) return InvalidArgumentError("x holds NaN or Inf; gradient refused");
  if (!AllFinite(grad_y)) return InvalidArgumentError("grad_y holds NaN or Inf; gradient refused");
  try {
    optimizer_->ZeroGrad();
    at::Tensor x32 = x.to(at::kFloat).detach().requires_grad_(true);
    at::Tensor y = module_->Forward(x32, mask);
    y.backward(grad_y.to(at::kFloat));
    at::Tensor grad_x = x32.grad();
    if (!AllFinite(grad_x) || !optimizer_->GradientsFinite()) {
      optimizer_->ZeroGrad();
      return InvalidArgumentError("the gradient of " + uid_ + " is not finite; update refused");
    }
    // Step rolls itself back (weights, optimizer state and step) when the update would leave
    // anything non-finite, and answers kInvalidArgument: the poison is never kept.
    DMOE_RETURN_IF_ERROR(optimizer_->Step());
    return grad_x.to(x.scalar_type());
  } catch (const std::exception& e) {
    optimizer_->ZeroGrad();
    return InternalError("backward of " + uid_ + " failed: " + e.what());
  }
}

int64_t Expert::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : module_->parameters()) n += p.numel();
  return n;
}

NamedTensors Expert::Parameters() const {
  NamedTensors out;
  for (const auto& item : module_->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

NamedTensors Expert::StateTensors() const {
  NamedTensors out;
  for (auto& [name, t] : Parameters()) out.emplace_back("param/" + name, t.detach());
  for (auto& entry : optimizer_->State()) out.push_back(std::move(entry));
  return out;
}

Status Expert::LoadStateTensors(const NamedTensors& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  NamedTensors params = Parameters();
  for (const auto& [name, p] : params) {
    auto it = by_name.find("param/" + name);
    if (it == by_name.end()) return InvalidArgumentError("checkpoint lacks parameter " + name);
    if (it->second.sizes() != p.sizes()) {
      return InvalidArgumentError("checkpoint parameter " + name + " has shape " +
                                  ShapeString(it->second) + ", expected " + ShapeString(p));
    }
  }
  NamedTensors optim;
  for (const auto& [name, t] : state) {
    if (name.rfind("optim/", 0) == 0) optim.emplace_back(name, t);
  }
  // LoadState checks everything before it changes anything, so a bad checkpoint changes nothing.
  DMOE_RETURN_IF_ERROR(optimizer_->LoadState(optim));
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params) p.copy_(by_name["param/" + name]);
  optimizer_->Remeasure();
  return Status::Ok();
}

}  // namespace dmoe::expert_server
