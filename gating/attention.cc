#include "gating/attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <stdexcept>

namespace dmoe::gating {
namespace {

// q [.., heads, n, hd] are the last n of the L positions whose keys and values are k, v
// [.., heads, L, hd]; query i sits at position L - n + i and sees keys 0..L - n + i.
at::Tensor CausalAttend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t n = q.size(-2), length = k.size(-2);
  at::Tensor scores =
      at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor query_pos = at::arange(length - n, length, at::kLong).unsqueeze(1);
  at::Tensor key_pos = at::arange(length, at::kLong).unsqueeze(0);
  scores = scores.masked_fill(key_pos > query_pos, -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(scores, -1), v);
}

// RoPE: t [.., n, hd] with its n rows at `positions` [n], pairs (i, i + hd / 2) rotated by
// position * 10000^(-i / (hd / 2)).
at::Tensor Rotate(const at::Tensor& t, const at::Tensor& positions) {
  const int64_t half = t.size(-1) / 2;
  at::Tensor inv_freq = at::pow(10000.0, -at::arange(half, at::kFloat) / static_cast<double>(half));
  at::Tensor angles = positions.to(at::kFloat).unsqueeze(1) * inv_freq.unsqueeze(0);  // [n, half]
  at::Tensor cos = at::cos(angles).repeat({1, 2}), sin = at::sin(angles).repeat({1, 2});
  at::Tensor rotated = at::cat({-t.narrow(-1, half, half), t.narrow(-1, 0, half)}, -1);
  return t * cos + rotated * sin;
}

// [.., heads, n, hd] -> [.., n, heads * hd].
at::Tensor MergeHeads(const at::Tensor& x) {
  at::Tensor t = x.transpose(-3, -2);
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - 2);
  shape.push_back(t.size(-2) * t.size(-1));
  return t.reshape(shape);
}

}  // namespace

CausalSelfAttentionImpl::CausalSelfAttentionImpl(int64_t dim, int64_t heads, bool rotary)
    : heads_(heads), rotary_(rotary) {
  if (heads < 1 || dim % heads != 0 || (rotary && (dim / heads) % 2 != 0)) {
    throw std::invalid_argument("attention: " + std::to_string(heads) +
                                " heads do not divide the width " + std::to_string(dim) +
                                (rotary ? " into heads of even width" : ""));
  }
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  qkv_ = register_module("qkv", torch::nn::Linear(dim, 3 * dim));
  proj_ = register_module("proj", torch::nn::Linear(dim, dim));
}

std::vector<at::Tensor> CausalSelfAttentionImpl::Project(const at::Tensor& x,
                                                         const at::Tensor& positions) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.insert(shape.end(), {3, heads_, x.size(-1) / heads_});
  at::Tensor qkv = qkv_->forward(norm_->forward(x)).reshape(shape);  // [.., n, 3, heads, hd]
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < 3; ++i) out.push_back(qkv.select(-3, i).transpose(-3, -2));
  if (rotary_) {
    for (int64_t i = 0; i < 2; ++i) out[i] = Rotate(out[i], positions);
  }
  return out;
}

at::Tensor CausalSelfAttentionImpl::forward(const at::Tensor& x) {
  if (x.dim() != 3) throw std::invalid_argument("attention: x must be [B, T, d]");
  std::vector<at::Tensor> qkv = Project(x, at::arange(x.size(1), at::kLong));
  return x + proj_->forward(MergeHeads(CausalAttend(qkv[0], qkv[1], qkv[2])));
}

at::Tensor CausalSelfAttentionImpl::Extend(const at::Tensor& x, const at::Tensor& positions,
                                           const std::vector<int64_t>& counts,
                                           const std::vector<LayerKv*>& kv) {
  if (x.dim() != 2 || counts.size() != kv.size()) {
    throw std::invalid_argument("attention: Extend takes x [N, d] and one count per cache");
  }
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  if (total != x.size(0)) throw std::invalid_argument("attention: counts do not sum to N");
  std::vector<at::Tensor> qkv = Project(x, positions);  // each [heads, N, hd]
  std::vector<at::Tensor> outs;
  int64_t offset = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    LayerKv& cache = *kv[s];
    at::Tensor k = qkv[1].narrow(1, offset, counts[s]);
    at::Tensor v = qkv[2].narrow(1, offset, counts[s]);
    cache.keys = cache.keys.defined() ? at::cat({cache.keys, k}, 1) : k.clone();
    cache.values = cache.values.defined() ? at::cat({cache.values, v}, 1) : v.clone();
    outs.push_back(CausalAttend(qkv[0].narrow(1, offset, counts[s]), cache.keys, cache.values));
    offset += counts[s];
  }
  return x + proj_->forward(MergeHeads(at::cat(outs, 1)));
}

}  // namespace dmoe::gating
