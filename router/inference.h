// Inference: runs published models forward for the router, through the same DmoeModel (and so the
// same RemoteMixtureOfExperts) the trainers use, and builds them for the generator
// (router/generation.h): the one place the router turns a published model into a network. A built
// model is cached per name and rebuilt when a newer version is published. Thread-safe; requests
// for one model run one at a time.
#ifndef DMOE_ROUTER_INFERENCE_H_
#define DMOE_ROUTER_INFERENCE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "dht/dht.h"
#include "gating/expert_caller.h"
#include "gating/model.h"
#include "storage/model_store.h"

namespace dmoe::gating {
class Swarm;
}  // namespace dmoe::gating

namespace dmoe::net {
class BufferPool;
}  // namespace dmoe::net

namespace dmoe::router {

struct InferResult {
  at::Tensor y;                                   // F32 [B, output_dim], raw logits
  std::vector<std::vector<std::string>> experts;  // per sample, the uids that answered
  int64_t model_version = 0;
};

// One published version of a model, built. Shared: the cache holds it until a newer version
// replaces it, and whoever still runs it (a generation that started on it) keeps it alive.
struct LoadedModel {
  int64_t version = 0;
  // Held around every use of `model`: a torch module runs on one thread at a time.
  std::mutex mu;
  gating::DmoeModel model{nullptr};
};

class Inference {
 public:
  // `server_keys`, when set, are the only publishers whose experts are used (--server-keys).
  // Expert calls take their buffers from `pool` and their deadlines from `clock`; `dht`, `clock`
  // and `pool` must outlive the inference. Calls to the endpoints of `local` go to those
  // functions (gating::CallerOptions::local).
  Inference(dht::Dht& dht, const Clock& clock, net::BufferPool& pool,
            std::optional<std::set<PublicKey>> server_keys = std::nullopt,
            std::map<std::string, gating::LocalEndpoint> local = {});
  ~Inference();

  // x: F32 [B, input_dim]. kUnavailable when the swarm cannot answer (no live experts).
  Result<InferResult> Run(const storage::Model& model, const at::Tensor& x);

  // The network of `model` (in eval mode), built on first use of its version and cached by name;
  // a request for an older version than the cached one builds it without replacing the newer.
  // Blocks while it builds. Errors: those of parsing the spec, decoding the state and loading it
  // into the network (kInvalidArgument).
  Result<std::shared_ptr<LoadedModel>> Load(const storage::Model& model);

  // The most local parameters a published model may have: 256M, 1 GiB of F32. Beyond it the
  // router would spend that memory building the network just to check the state dict.
  static constexpr int64_t kMaxModelParameters = int64_t{256} << 20;

  // Checks that `spec_json` parses, names the model `name`, that its network has at most
  // kMaxModelParameters parameters and no more than `state_blob` has bytes (counted from the spec,
  // before anything is built), that every floating tensor of the state is finite, and that
  // `state_blob` (safetensors) holds exactly the tensors that spec's network has, with their
  // shapes. Every refusal is kInvalidArgument naming what is wrong.
  Status ValidateModel(const std::string& name, const std::string& spec_json,
                       std::span<const uint8_t> state_blob);

  static std::vector<std::string> GridPrefixesOf(const std::string& spec_json);
  // The input_dim of a feature model's spec. kInvalidArgument for a token model, which is run
  // through POST .../generate instead, and for a spec that does not parse.
  static Result<int64_t> InputDimOf(const std::string& spec_json);

 private:
  std::shared_ptr<gating::Swarm> swarm_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<LoadedModel>> loaded_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_INFERENCE_H_
