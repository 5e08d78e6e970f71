// The model spec of PROTOCOL section 5: the JSON from which the trainer and the router build the
// same network. Parsing is torch-free and strict: every refusal is kInvalidArgument naming the
// layer and the field. Layer types are parsed here, once, into LayerType; nothing downstream
// compares type strings.
//
//   {"name": "fmnist", "input_dim": 784, "layers": [
//     {"type": "linear", "out": 256}, {"type": "relu"},
//     {"type": "residual_moe", "uid_prefix": "ffn", "grid": [4, 4], "k_best": 4, "k_min": 1,
//      "forward_timeout_ms": 3000, "timeout_after_k_min_ms": 200,
//      "backward_k_min": 1, "backward_timeout_ms": 3000},
//     {"type": "layer_norm"}, {"type": "linear", "out": 10}]}
//
// A ModelSpec is a plain value: copy it, share it read-only between threads.
#ifndef DMOE_MODEL_MODEL_SPEC_H_
#define DMOE_MODEL_MODEL_SPEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe::model {

enum class LayerType { kLinear, kRelu, kGelu, kLayerNorm, kDropout, kMoe, kResidualMoe };

// The spec's spelling of `type`: "linear", "relu", ..., "residual_moe".
std::string_view LayerTypeName(LayerType type);
// Whether the layer's work is done by remote experts (moe and residual_moe): every other type runs
// where the model runs.
inline bool IsMoe(LayerType type) {
  return type == LayerType::kMoe || type == LayerType::kResidualMoe;
}

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
  LayerType type = LayerType::kLinear;
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
  // The spec as JSON that ParseModelSpec reads back to an equal spec.
  std::string ToJson() const;
};

// Parses and checks a spec, and fills in each layer's widths.
Result<ModelSpec> ParseModelSpec(std::string_view json);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_MODEL_SPEC_H_
