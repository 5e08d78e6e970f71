// CausalSelfAttention: the `attention` layer of a token model spec (model/model_spec.h), a whole
// pre-norm block x + proj(attention(layer_norm(x))) in which token t of a sequence attends to
// tokens 0..t, optionally with rotary position embeddings (RoPE) on queries and keys. It runs
// where the model runs (trainer, router), never on expert servers.
//
// Two ways to run it give the same values: forward() over whole sequences [B, T, d], and Extend()
// over the next tokens of sequences whose earlier keys and values are kept in a LayerKv per
// sequence, so generation computes each token once. Written with ATen ops (libtorch 1.13 has no
// public scaled_dot_product_attention). Used from one thread at a time, as torch modules are.
#ifndef DMOE_GATING_ATTENTION_H_
#define DMOE_GATING_ATTENTION_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <vector>

namespace dmoe::gating {

// One sequence's keys and values in one attention layer: [heads, length, head_dim] each, both
// undefined before the sequence's first token.
struct LayerKv {
  at::Tensor keys;
  at::Tensor values;
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  // Registers "norm" (layer norm over dim), "qkv" (dim -> 3 dim) and "proj" (dim -> dim), with
  // biases. `heads` divides `dim`. With `rotary`, query and key of position p are rotated by
  // p * 10000^(-i / (hd / 2)) in their i-th pair (element i with element i + hd / 2, hd the head
  // width, which must then be even).
  CausalSelfAttentionImpl(int64_t dim, int64_t heads, bool rotary = false);

  // x [B, T, dim] -> [B, T, dim]; every row is a sequence starting at position 0.
  at::Tensor forward(const at::Tensor& x);

  // x [N, dim] holds the next tokens of several sequences, packed: sequence s owns the next
  // counts[s] rows (counts sum to N, each >= 1), and attends to the keys and values already in
  // *kv[s] and to its own rows up to each row; `positions` [N] int64 gives each row's position
  // in its sequence (*kv[s] holds positions 0.. of sequence s). Appends this call's keys and
  // values to each *kv[s].
  at::Tensor Extend(const at::Tensor& x, const at::Tensor& positions,
                    const std::vector<int64_t>& counts, const std::vector<LayerKv*>& kv);

 private:
  // [.., n, dim] whose rows sit at `positions` [n] -> q, k, v as [.., heads, n, head_dim].
  std::vector<at::Tensor> Project(const at::Tensor& x, const at::Tensor& positions);

  int64_t heads_;
  bool rotary_;
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear qkv_{nullptr};
  torch::nn::Linear proj_{nullptr};
};
TORCH_MODULE(CausalSelfAttention);

}  // namespace dmoe::gating

#endif  // DMOE_GATING_ATTENTION_H_
