// Token models for the generation tests: byte-level decoder-only transformers built here from a
// spec, published to a router (or handed to a Generator) as storage::Model, and run here with full
// forwards to check what the router generates.
#ifndef DMOE_TESTS_ROUTER_TOKEN_MODELS_H_
#define DMOE_TESTS_ROUTER_TOKEN_MODELS_H_

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/utils.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "gating/model.h"
#include "model/model_spec.h"
#include "storage/model_store.h"
#include "tensor/torch_tensor.h"

namespace dmoe::router {

// A token model of local layers only: no expert needed.
inline std::string LocalLmSpec(const std::string& name, int64_t max_len = 64) {
  return R"({"name": ")" + name + R"(", "input": "tokens", "vocab": 256, "max_len": )" +
         std::to_string(max_len) + R"(, "layers": [{"type": "embedding", "dim": 32},
    {"type": "positions"}, {"type": "attention", "heads": 4}, {"type": "layer_norm"},
    {"type": "lm_head"}]})";
}

// A token model whose feed-forward blocks are residual_moe layers over the 4x4 grid of "ffn"
// experts of width 16 that tests/gating/swarm4x4.h starts.
inline std::string SwarmLmSpec(const std::string& name, int64_t max_len, int64_t k_min,
                               int64_t forward_timeout_ms) {
  const std::string moe =
      R"({"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4],
      "k_best": 2, "k_min": )" +
      std::to_string(k_min) + R"(, "forward_timeout_ms": )" + std::to_string(forward_timeout_ms) +
      R"(, "timeout_after_k_min_ms": 300})";
  return R"({"name": ")" + name + R"(", "input": "tokens", "vocab": 256, "max_len": )" +
         std::to_string(max_len) + R"(, "layers": [{"type": "embedding", "dim": 16},
    {"type": "positions"}, {"type": "attention", "heads": 2}, )" +
         moe + R"(, {"type": "attention", "heads": 2}, )" + moe +
         R"(, {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";
}

// The network of `spec_json`, initialized from torch's RNG seeded with `seed`.
inline gating::DmoeModel BuildLm(const std::string& spec_json, uint64_t seed,
                                 gating::ModelContext context = {}) {
  at::manual_seed(seed);
  Result<model::ModelSpec> spec = model::ParseModelSpec(spec_json);
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  gating::DmoeModel model(*spec, std::move(context));
  model->eval();
  return model;
}

// Trains a model of local layers for `steps` Adam steps to continue `text` (which must be longer
// than max_len), so that what it generates is mostly that text's characters.
inline void TrainOn(gating::DmoeModel& model, const std::string& text, int steps) {
  const int64_t len = model->spec().max_len;
  const std::vector<data::Token> tokens = data::EncodeBytes(text);
  at::Tensor all = at::tensor(tokens, at::kLong);
  std::vector<at::Tensor> inputs, targets;
  for (int64_t begin = 0; begin + len + 1 <= all.size(0); begin += len / 2) {
    inputs.push_back(all.narrow(0, begin, len));
    targets.push_back(all.narrow(0, begin + 1, len));
  }
  const at::Tensor x = at::stack(inputs), y = at::stack(targets);
  model->train();
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < steps; ++step) {
    adam.zero_grad();
    at::cross_entropy_loss(model->forward(x).reshape({-1, 256}), y.reshape({-1})).backward();
    adam.step();
  }
  model->eval();
}

// `model` as the router keeps it once published as `version`.
inline storage::Model Stored(const gating::DmoeModel& model, const std::string& spec_json,
                             int64_t version) {
  std::vector<tensor::NamedTensor> tensors;
  for (const auto& [name, t] : model->StateDict()) tensors.push_back({name, t});
  Result<std::vector<uint8_t>> blob =
      tensor::EncodeFromTorch(tensors, {{"spec", spec_json}, {"version", std::to_string(version)}});
  EXPECT_TRUE(blob.ok()) << blob.status().ToString();
  storage::Model stored;
  stored.info.name = model->spec().name;
  stored.info.version = version;
  stored.info.spec_json = spec_json;
  stored.state = blob.ok() ? std::move(blob).value() : std::vector<uint8_t>{};
  return stored;
}

// The bytes greedy decoding appends to `prompt`, one full forward of the whole sequence per
// token, the most likely token each time (the lowest id among equals).
inline std::string GreedyBytes(gating::DmoeModel& model, const std::string& prompt, int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<data::Token> tokens = data::EncodeBytes(prompt);
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor logits = model->forward(at::tensor(tokens, at::kLong).unsqueeze(0))[0][-1];
    const int64_t next = logits.argmax().item<int64_t>();
    tokens.push_back(next);
    out.push_back(static_cast<char>(next));
  }
  return out;
}

}  // namespace dmoe::router

#endif  // DMOE_TESTS_ROUTER_TOKEN_MODELS_H_
