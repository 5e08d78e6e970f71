#include "expert_server/checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <map>

#include "expert_server/hosting.h"
#include "tensor/torch_tensor.h"

namespace dmoe::expert_server {
namespace {

// kInvalidArgument naming the first tensor that holds NaN or Inf.
Status CheckFinite(const std::string& uid, int64_t step, const NamedTensors& state) {
  for (const auto& [name, t] : state) {
    if (t.is_floating_point() && !at::isfinite(t).all().item<bool>()) {
      return InvalidArgumentError("the state of " + uid + " at step " + std::to_string(step) +
                                  " holds NaN or Inf in " + name + "; not checkpointed");
    }
  }
  return Status::Ok();
}

}  // namespace

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
  DMOE_RETURN_IF_ERROR(CheckFinite(snapshot.uid, snapshot.step, snapshot.state));
  std::vector<safetensors::TensorRef> refs;
  for (const auto& [name, t] : snapshot.state) {
    DMOE_ASSIGN_OR_RETURN(safetensors::DType dtype, tensor::FromScalarType(t.scalar_type()));
    const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
    refs.push_back({name, dtype, t.sizes().vec(), {bytes, t.nbytes()}});
  }
  return store.SaveCheckpoint(snapshot.uid, refs, snapshot.step, snapshot.metadata);
}

namespace {

// Decodes one kept version and loads it into the expert; the expert is unchanged on error.
Status RestoreVersion(const storage::ExpertStore& store, int64_t step, Expert& expert) {
  DMOE_ASSIGN_OR_RETURN(storage::Checkpoint cp, store.Load(expert.uid(), step));
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
  std::map<std::string, at::ScalarType> dtypes;
  for (const auto& [name, t] : expert.StateTensors()) dtypes[name] = t.scalar_type();
  NamedTensors state;
  for (const storage::NamedTensor& t : cp.tensors) {
    safetensors::TensorView view{t.name, t.dtype, t.shape, t.data};
    Result<at::Tensor> tensor = tensor::ToTorch(view);
    if (!tensor.ok()) return InternalError("tensor " + t.name + ": " + tensor.status().message());
    auto expected = dtypes.find(t.name);
    // LoadStateTensors would convert on copy: BOOL bytes would become weights of 0 and 1.
    if (expected != dtypes.end() && tensor->scalar_type() != expected->second) {
      return InternalError("tensor " + t.name + " has dtype " +
                           c10::toString(tensor->scalar_type()) + ", the expert holds " +
                           c10::toString(expected->second));
    }
    state.emplace_back(t.name, std::move(tensor).value());
  }
  // Poison in a kept version is damage like bad bytes: the caller tries an older one.
  if (Status finite = CheckFinite(expert.uid(), step, state); !finite.ok()) {
    return InternalError(finite.message());
  }
  Status loaded = expert.LoadStateTensors(state);
  // A tensor that does not fit the expert is a damaged checkpoint here (type and width matched).
  if (!loaded.ok()) return InternalError(loaded.message());
  return Status::Ok();
}

bool IsConfigMismatch(const Status& s) { return s.code() == Code::kInvalidArgument; }

}  // namespace

Status RestoreLatest(const storage::ExpertStore& store, Expert& expert) {
  DMOE_ASSIGN_OR_RETURN(std::vector<int64_t> steps, store.Steps(expert.uid()));
  if (steps.empty()) return NotFoundError("expert " + expert.uid() + " has no checkpoint");
  std::string skipped;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    Status s = RestoreVersion(store, *it, expert);
    if (s.ok()) return s;
    if (IsConfigMismatch(s) && it == steps.rbegin()) return s;
    spdlog::warn("expert {}: skipping its checkpoint at step {}: {}", expert.uid(), *it,
                 s.message());
    skipped += (skipped.empty() ? "" : ", ") + std::to_string(*it);
  }
  return InternalError("expert " + expert.uid() + ": no kept checkpoint is intact (skipped steps " +
                       skipped + ")");
}

// hosting.h: the server's torch-free view of its experts, here beside the snapshots it uses.

Result<std::unique_ptr<Runtime>> CreateRuntime(const std::vector<std::string>& uids,
                                               const ExpertConfig& config,
                                               const OptimizerOptions& optimizer,
                                               const storage::ExpertStore* store,
                                               RuntimeOptions options) {
  ExpertRegistry registry = ExpertRegistry::WithBuiltins();
  std::vector<std::unique_ptr<Expert>> experts;
  for (const std::string& uid : uids) {
    DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Expert> expert,
                          Expert::Create(registry, uid, config, optimizer));
    if (store != nullptr) {
      Status restored = RestoreLatest(*store, *expert);
      if (restored.ok()) {
        spdlog::info("expert {}: restored checkpoint at step {}", uid, expert->step());
      } else if (restored.code() != Code::kNotFound) {
        return Status(restored.code(), "cannot restore " + uid + ": " + restored.message());
      }
    }
    experts.push_back(std::move(expert));
  }
  return std::make_unique<Runtime>(std::move(experts), std::move(options));
}

std::vector<std::pair<std::string, Status>> CheckpointExperts(Runtime& runtime,
                                                              storage::ExpertStore& store) {
  std::vector<ExpertSnapshot> snapshots;
  runtime
      .RunExclusive([&](std::map<std::string, Expert*>& experts) {
        for (auto& [uid, expert] : experts) snapshots.push_back(TakeSnapshot(*expert));
      })
      .IgnoreError();  // Always OK: it runs `fn` whether or not the runtime runs.
  std::vector<std::pair<std::string, Status>> outcomes;
  for (const ExpertSnapshot& s : snapshots) outcomes.emplace_back(s.uid, SaveSnapshot(store, s));
  return outcomes;
}

}  // namespace dmoe::expert_server
