#include "tests/openai/shift_model.h"

#include <nlohmann/json.hpp>

#include "tests/testing/f32_tensors.h"

namespace dmoe::testing {

std::string ShiftSpec(const std::string& name, bool with_moe, int max_len) {
  nlohmann::json layers = nlohmann::json::array();
  layers.push_back({{"type", "embedding"}, {"dim", kShiftDim}});
  if (with_moe) {
    layers.push_back({{"type", "residual_moe"},
                      {"pre_norm", true},
                      {"uid_prefix", "ffn"},
                      {"grid", {4, 4}},
                      {"k_best", 2},
                      {"k_min", 1},
                      {"forward_timeout_ms", 5000},
                      {"timeout_after_k_min_ms", 300}});
  }
  layers.push_back({{"type", "lm_head"}});
  return nlohmann::json{
      {"name", name}, {"input", "tokens"}, {"vocab", 256}, {"max_len", max_len}, {"layers", layers}}
      .dump();
}

std::vector<uint8_t> ShiftModel(const std::string& name, bool with_moe, int64_t version,
                                int max_len) {
  constexpr int64_t kVocab = 256;
  std::vector<F32Tensor> state;
  F32Tensor embedding{"layer0.weight", {kVocab, kShiftDim}, std::vector<float>(kVocab * kShiftDim)};
  F32Tensor head{with_moe ? "layer2.weight" : "layer1.weight",
                 {kVocab, kShiftDim},
                 std::vector<float>(kVocab * kShiftDim)};
  for (int64_t b = 0; b < kVocab; ++b) {
    embedding.values[b * kShiftDim + b] = kShiftScale;
    head.values[((b + 1) % kVocab) * kShiftDim + b] = 1.0f;  // logit of b + 1 reads feature b
  }
  state.push_back(std::move(embedding));
  if (with_moe) {
    // The gating of each grid dimension (small, so that every expert gets chosen now and then),
    // and the pre-norm's identity.
    for (int d = 0; d < 2; ++d) {
      const std::string gate = "layer1.gate" + std::to_string(d);
      state.push_back(Pattern(gate + ".weight", {4, kShiftDim}, 11 + d, 0.05f));
      state.push_back(Pattern(gate + ".bias", {4}, 21 + d, 0.05f));
    }
    state.push_back({"layer1.norm.weight", {kShiftDim}, std::vector<float>(kShiftDim, 1.0f)});
    state.push_back({"layer1.norm.bias", {kShiftDim}, std::vector<float>(kShiftDim, 0.0f)});
  }
  state.push_back(std::move(head));
  return EncodeF32(
      state, {{"spec", ShiftSpec(name, with_moe, max_len)}, {"version", std::to_string(version)}});
}

std::string ShiftContinuation(const std::string& prompt, int tokens) {
  std::string out;
  char last = prompt.empty() ? '\0' : prompt.back();
  for (int i = 0; i < tokens; ++i) out += ++last;
  return out;
}

}  // namespace dmoe::testing
