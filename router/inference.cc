#include "router/inference.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "core/clock.h"
#include "gating/model.h"
#include "gating/swarm.h"
#include "model/model_spec.h"
#include "tensor/torch_tensor.h"

namespace dmoe::router {

Inference::Inference(dht::Dht& dht, const Clock& clock, net::BufferPool& pool,
                     std::optional<std::set<PublicKey>> server_keys,
                     std::map<std::string, gating::LocalEndpoint> local) {
  gating::SwarmOptions options;
  options.caller.buffer_pool = &pool;
  options.caller.local = std::move(local);
  options.server_keys = std::move(server_keys);
  swarm_ = std::make_shared<gating::Swarm>(&dht, clock, std::move(options));
}

Inference::~Inference() = default;

std::vector<std::string> Inference::GridPrefixesOf(const std::string& spec_json) {
  Result<model::ModelSpec> spec = model::ParseModelSpec(spec_json);
  return spec.ok() ? spec->GridPrefixes() : std::vector<std::string>{};
}

Result<int64_t> Inference::InputDimOf(const std::string& spec_json) {
  DMOE_ASSIGN_OR_RETURN(model::ModelSpec spec, model::ParseModelSpec(spec_json));
  if (spec.input == model::InputKind::kTokens) {
    return InvalidArgumentError("model '" + spec.name +
                                "' is a token model (text): use POST /v1/models/" + spec.name +
                                "/generate");
  }
  return spec.input_dim;
}

namespace {

// kInvalidArgument naming the first floating tensor that holds NaN or Inf.
Status CheckFinite(const std::map<std::string, at::Tensor>& tensors) {
  for (const auto& [name, t] : tensors) {
    if (t.is_floating_point() && !at::isfinite(t).all().item<bool>()) {
      return InvalidArgumentError("tensor '" + name +
                                  "' holds NaN or Inf; a model with non-finite weights is refused");
    }
  }
  return Status::Ok();
}

}  // namespace

Status Inference::ValidateModel(const std::string& name, const std::string& spec_json,
                                std::span<const uint8_t> state_blob) {
  DMOE_ASSIGN_OR_RETURN(model::ModelSpec spec, model::ParseModelSpec(spec_json));
  if (spec.name != name) {
    return InvalidArgumentError("the spec names the model '" + spec.name +
                                "' but it is published as '" + name + "'");
  }
  // Bounded before the network is built: a spec of a few bytes can ask for terabytes.
  const double params = spec.LocalParameterCount();
  if (params > static_cast<double>(kMaxModelParameters)) {
    return InvalidArgumentError("the spec's network has " + std::to_string(params) +
                                " parameters; the router takes at most " +
                                std::to_string(kMaxModelParameters));
  }
  // Every parameter takes at least one byte of the state, whatever its dtype.
  if (params > static_cast<double>(state_blob.size())) {
    return InvalidArgumentError("the spec's network has " +
                                std::to_string(static_cast<int64_t>(params)) +
                                " parameters, more than the " + std::to_string(state_blob.size()) +
                                " bytes of the published state can hold");
  }
  DMOE_ASSIGN_OR_RETURN(tensor::TorchPayload payload, tensor::DecodeToTorch(state_blob));
  DMOE_RETURN_IF_ERROR(CheckFinite(payload.tensors));
  gating::DmoeModel model(spec, gating::ModelContext{swarm_});
  return model->LoadStateDict(payload.tensors);
}

Result<std::shared_ptr<LoadedModel>> Inference::Load(const storage::Model& m) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = loaded_.find(m.info.name);
  if (it != loaded_.end() && it->second->version == m.info.version) return it->second;
  DMOE_ASSIGN_OR_RETURN(model::ModelSpec spec, model::ParseModelSpec(m.info.spec_json));
  DMOE_ASSIGN_OR_RETURN(tensor::TorchPayload payload, tensor::DecodeToTorch(m.state));
  auto loaded = std::make_shared<LoadedModel>();
  loaded->version = m.info.version;
  loaded->model = gating::DmoeModel(spec, gating::ModelContext{swarm_});
  DMOE_RETURN_IF_ERROR(loaded->model->LoadStateDict(payload.tensors));
  loaded->model->eval();
  if (it == loaded_.end() || it->second->version < m.info.version) loaded_[m.info.name] = loaded;
  return loaded;
}

Result<InferResult> Inference::Run(const storage::Model& model, const at::Tensor& x) {
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<LoadedModel> loaded, Load(model));
  std::lock_guard<std::mutex> lock(loaded->mu);
  InferResult r;
  r.model_version = loaded->version;
  try {
    torch::NoGradGuard no_grad;
    r.y = loaded->model->forward(x).to(at::kFloat).contiguous();
  } catch (const std::exception& e) {
    // The layer throws when the swarm cannot give enough answers: another moment or another
    // router may do better, so this is unavailable, not a bad request.
    return UnavailableError(std::string("inference failed: ") + e.what());
  }
  r.experts = loaded->model->last_experts();
  return r;
}

}  // namespace dmoe::router
