#include "router/inference.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "gating/model.h"
#include "gating/model_spec.h"
#include "gating/remote_call.h"
#include "tensor/torch_tensor.h"

namespace dmoe::router {

struct Inference::Loaded {
  int64_t version = 0;
  std::mutex mu;  // one forward at a time per model
  gating::DmoeModel model{nullptr};
};

Inference::Inference(dht::Dht& dht, std::optional<std::set<PublicKey>> server_keys) {
  gating::SwarmOptions options;
  options.server_keys = std::move(server_keys);
  swarm_ = std::make_shared<gating::Swarm>(&dht, std::move(options));
}

Inference::~Inference() = default;

std::vector<std::string> Inference::GridPrefixesOf(const std::string& spec_json) {
  Result<gating::ModelSpec> spec = gating::ParseModelSpec(spec_json);
  return spec.ok() ? spec->GridPrefixes() : std::vector<std::string>{};
}

Result<int64_t> Inference::InputDimOf(const std::string& spec_json) {
  DMOE_ASSIGN_OR_RETURN(gating::ModelSpec spec, gating::ParseModelSpec(spec_json));
  return spec.input_dim;
}

Status Inference::ValidateModel(const std::string& name, const std::string& spec_json,
                                std::span<const uint8_t> state_blob) {
  DMOE_ASSIGN_OR_RETURN(gating::ModelSpec spec, gating::ParseModelSpec(spec_json));
  if (spec.name != name) {
    return InvalidArgumentError("the spec names the model '" + spec.name +
                                "' but it is published as '" + name + "'");
  }
  DMOE_ASSIGN_OR_RETURN(tensor::TorchPayload payload, tensor::DecodeToTorch(state_blob));
  gating::DmoeModel model(spec, gating::ModelContext{swarm_});
  return model->LoadStateDict(payload.tensors);
}

Result<std::shared_ptr<Inference::Loaded>> Inference::Load(const storage::Model& m) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = loaded_.find(m.info.name);
  if (it != loaded_.end() && it->second->version == m.info.version) return it->second;
  DMOE_ASSIGN_OR_RETURN(gating::ModelSpec spec, gating::ParseModelSpec(m.info.spec_json));
  DMOE_ASSIGN_OR_RETURN(tensor::TorchPayload payload, tensor::DecodeToTorch(m.state));
  auto loaded = std::make_shared<Loaded>();
  loaded->version = m.info.version;
  loaded->model = gating::DmoeModel(spec, gating::ModelContext{swarm_});
  DMOE_RETURN_IF_ERROR(loaded->model->LoadStateDict(payload.tensors));
  loaded->model->eval();
  loaded_[m.info.name] = loaded;
  return loaded;
}

Result<InferResult> Inference::Run(const storage::Model& model, const at::Tensor& x) {
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<Loaded> loaded, Load(model));
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
