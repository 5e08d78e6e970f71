#include "expert_server/checkpoint.h"

#include <ATen/ATen.h>

#include "tensor/torch_tensor.h"

namespace dmoe::expert_server {
ExpertSnapshot TakeSnapshot(const Expert& expert) {
  ExpertSnapshot s;
  s.uid = expert.uid();
  s.step = expert.step();
  for (auto& [name, t] : expert.StateTensors())
    s.state.emplace_back(name, t.detach().contiguous().clone());
  s.metadata["type"] = expert.config().type;
  s.metadata["hidden_dim"] = std::to_string(expert.config().hidden_dim);
  return s;
}

Status SaveSnapshot(storage::ExpertStore& store, const ExpertSnapshot& snapshot) {
  std::vector<safetensors::TensorRef> refs;
  for (const auto& [name, t] : snapshot.state) {
    DMOE_ASSIGN_OR_RETURN(safetensors::DType dtype, tensor::FromScalarType(t.scalar_type()));
    const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
    refs.push_back({name, dtype, t.sizes().vec(), {bytes, t.nbytes()}});
  }
  return store.SaveCheckpoint(snapshot.uid, refs, snapshot.step, snapshot.metadata);
}

Status RestoreLatest(const storage::ExpertStore& store, Expert& expert) {
  DMOE_ASSIGN_OR_RETURN(storage::Checkpoint cp, store.LoadLatest(expert.uid()));
  auto type = cp.metadata.find("type");
  auto dim = cp.metadata.find("hidden_dim");
  if (type != cp.metadata.end() && type->second != expert.config().type) {
    return InvalidArgumentError("checkpoint of " + expert.uid() + " is of type " + type->second +
                                ", but the server hosts it as " + expert.config().type);
  }
  if (dim != cp.metadata.end() && dim->second != std::to_string(expert.config().hidden_dim)) {
    return InvalidArgumentError("checkpoint of " + expert.uid() + " has hidden_dim " + dim->second +
                                ", but the server hosts it with " +
                                std::to_string(expert.config().hidden_dim));
  }
  NamedTensors state;
  for (const storage::NamedTensor& t : cp.tensors) {
    safetensors::TensorView view{t.name, t.dtype, t.shape, t.data};
    DMOE_ASSIGN_OR_RETURN(at::Tensor tensor, tensor::ToTorch(view));
    state.emplace_back(t.name, std::move(tensor));
  }
  return expert.LoadStateTensors(state);
}

}  // namespace dmoe::expert_server
