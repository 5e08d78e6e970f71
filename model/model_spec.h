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
// A text model (a decoder-only transformer) says `"input": "tokens"` and declares its vocabulary
// and context length at the top level instead of `input_dim`; its first layer is `embedding`, its
// last `lm_head`, and its input is int64 token ids [B, T] with T <= max_len:
//
//   {"name": "lm", "input": "tokens", "vocab": 256, "max_len": 128, "layers": [
//     {"type": "embedding", "dim": 128}, {"type": "positions"},
//     {"type": "attention", "heads": 4},
//     {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4]},
//     {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]}
//
// The list stays flat: `attention` is a whole pre-norm block, x + proj(causal_attention(ln(x))),
// and `residual_moe` with `"pre_norm": true` is x + moe(ln(x)); each carries its own layer norm.
// `positions` adds a learned position embedding of max_len rows (position t of a sequence gets
// row t); an attention layer with `"rotary": true` rotates its queries and keys by position
// instead (RoPE, base 10000, the two halves of each head as the pairs), with no parameter.
// `lm_head` projects to vocab logits without bias, with its own weight or, when `tied`, with the
// embedding's. `embedding`, `positions`, `attention` and `lm_head` exist only in token models. A
// spec without `input` is a feature model, as it always was.
//
// `residual_ffn` ({"hidden": H, "pre_norm": true}) computes locally what a residual_moe layer asks
// of one ffn expert: x + ffn(ln(x)) with ffn(z) = layer_norm(z + W2 gelu(W1 z + b1) + b2), W1 of
// H rows (the experts' ffn has H = 4 x width). A dense network with H = k x 4 x width has the
// active parameters of a residual_moe layer with k_best = k: the baseline a mixture is compared
// against.
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

enum class LayerType {
  kLinear,
  kRelu,
  kGelu,
  kLayerNorm,
  kDropout,
  kMoe,
  kResidualMoe,
  kEmbedding,
  kPositions,
  kAttention,
  kLmHead,
  kResidualFfn,
};

// What the model takes: F32 features [B, input_dim], or int64 token ids [B, T].
enum class InputKind { kFeatures, kTokens };

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
  int64_t out = 0;        // linear: `out`; embedding: `dim`
  double p = 0;           // dropout only: the probability of zeroing an element in training
  MoeLayerSpec moe;       // moe and residual_moe only
  bool pre_norm = false;  // residual_moe, residual_ffn: x + f(layer_norm(x)) instead of x + f(x)
  int64_t hidden = 0;     // residual_ffn only: the width of its hidden layer
  int64_t heads = 0;      // attention only; divides the width
  bool rotary = false;    // attention only: q and k rotated by position (RoPE)
  bool tied = false;      // lm_head only: its weight is the embedding's
  // Filled in by ParseModelSpec. in_features is the width of the layer's input (the embedding's
  // is the vocabulary: one token id out of so many), out_features the width of its output (the
  // lm_head's is the vocabulary). max_len is the spec's context length, set on positions layers.
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t max_len = 0;
};

struct ModelSpec {
  std::string name;
  InputKind input = InputKind::kFeatures;
  int64_t input_dim = 0;  // feature models only; 0 in a token model
  int64_t vocab = 0;      // token models only: token ids are 0..vocab-1
  int64_t max_len = 0;    // token models only: the longest sequence (prompt and output) it takes
  std::vector<LayerSpec> layers;

  int64_t output_dim() const { return layers.empty() ? input_dim : layers.back().out_features; }
  // "ffn." for every moe layer, in order, without repeats.
  std::vector<std::string> GridPrefixes() const;
  // How many parameters the network gating::DmoeModel builds from this spec holds (the local
  // ones: gating projections and layer norms of moe layers, not the remote experts), in double
  // so that no width overflows. Lets a caller bound a spec before anything is built.
  double LocalParameterCount() const;
  // The spec as JSON that ParseModelSpec reads back to an equal spec.
  std::string ToJson() const;
};

// Parses and checks a spec, and fills in each layer's widths.
Result<ModelSpec> ParseModelSpec(std::string_view json);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_MODEL_SPEC_H_
