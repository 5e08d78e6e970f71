// The model spec of PROTOCOL section 5: the JSON from which the trainer and the router build the
// same network. Parsing is torch-free and strict: every refusal is kInvalidArgument naming the
// layer and the field.
//
//   {"name": "fmnist", "input_dim": 784, "layers": [
//     {"type": "linear", "out": 256}, {"type": "relu"},
//     {"type": "residual_moe", "uid_prefix": "ffn", "grid": [4, 4], "k_best": 4, "k_min": 1,
//      "forward_timeout_ms": 3000, "timeout_after_k_min_ms": 200,
//      "backward_k_min": 1, "backward_timeout_ms": 3000},
//     {"type": "layer_norm"}, {"type": "linear", "out": 10}]}
#ifndef DMOE_GATING_MODEL_SPEC_H_
#define DMOE_GATING_MODEL_SPEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe::gating {

struct MoeLayerSpec {
  std::string uid_prefix;     // "ffn"
  std::vector<int64_t> grid;  // [4, 4]
  int64_t k_best = 4;
  int64_t k_min = 1;
  int64_t forward_timeout_ms = 5000;
  int64_t timeout_after_k_min_ms = 500;
  int64_t backward_k_min = 1;
  int64_t backward_timeout_ms = 5000;
};

struct LayerSpec {
  std::string type;          // linear, relu, gelu, layer_norm, dropout, moe, residual_moe
  int64_t out = 0;           // linear only
  double p = 0;              // dropout only: the probability of zeroing an element in training
  MoeLayerSpec moe;          // moe and residual_moe only
  int64_t in_features = 0;   // width of the layer's input, filled in by ParseModelSpec
  int64_t out_features = 0;  // width of its output
};

struct ModelSpec {
  std::string name;
  int64_t input_dim = 0;
  std::vector<LayerSpec> layers;

  int64_t output_dim() const { return layers.empty() ? input_dim : layers.back().out_features; }
  // "ffn." for every moe layer, in order, without repeats.
  std::vector<std::string> GridPrefixes() const;
  std::string ToJson() const;
};

Result<ModelSpec> ParseModelSpec(std::string_view json);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_MODEL_SPEC_H_
