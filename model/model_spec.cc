#include "model/model_spec.h"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "core/uid.h"

namespace dmoe::model {
namespace {

using nlohmann::json;

constexpr std::array<std::pair<LayerType, std::string_view>, 12> kLayerTypeNames = {{
    {LayerType::kLinear, "linear"},
    {LayerType::kRelu, "relu"},
    {LayerType::kGelu, "gelu"},
    {LayerType::kLayerNorm, "layer_norm"},
    {LayerType::kDropout, "dropout"},
    {LayerType::kMoe, "moe"},
    {LayerType::kResidualMoe, "residual_moe"},
    {LayerType::kEmbedding, "embedding"},
    {LayerType::kPositions, "positions"},
    {LayerType::kAttention, "attention"},
    {LayerType::kLmHead, "lm_head"},
    {LayerType::kResidualFfn, "residual_ffn"},
}};

// The layer types that exist only in token models.
bool IsTokenLayer(LayerType type) {
  return type == LayerType::kEmbedding || type == LayerType::kPositions ||
         type == LayerType::kAttention || type == LayerType::kLmHead;
}

std::optional<LayerType> ParseLayerType(std::string_view name) {
  for (const auto& [type, spelling] : kLayerTypeNames) {
    if (spelling == name) return type;
  }
  return std::nullopt;
}

Result<int64_t> IntField(const json& obj, const char* key, const std::string& where, int64_t lo,
                         int64_t hi, std::optional<int64_t> fallback = std::nullopt) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (fallback) return *fallback;
    return InvalidArgumentError(where + ": missing '" + key + "'");
  }
  if (!it->is_number_integer())
    return InvalidArgumentError(where + ": '" + key + "' must be an integer");
  int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) {
    return InvalidArgumentError(where + ": '" + key + "' is " + std::to_string(v) + ", allowed " +
                                std::to_string(lo) + ".." + std::to_string(hi));
  }
  return v;
}

// A probability in [0, 1): dropout's `p`.
Result<double> ProbabilityField(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return InvalidArgumentError(where + ": missing '" + key + "'");
  if (!it->is_number()) return InvalidArgumentError(where + ": '" + key + "' must be a number");
  const double v = it->get<double>();
  if (!(v >= 0 && v < 1)) {
    return InvalidArgumentError(where + ": '" + key + "' is " + it->dump() + ", allowed [0, 1)");
  }
  return v;
}

Result<bool> BoolField(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return false;
  if (!it->is_boolean())
    return InvalidArgumentError(where + ": '" + key + "' must be true or false");
  return it->get<bool>();
}

Status CheckKeys(const json& obj, const std::set<std::string>& allowed, const std::string& where) {
  for (const auto& [key, value] : obj.items()) {
    if (!allowed.count(key)) return InvalidArgumentError(where + ": unknown field '" + key + "'");
  }
  return Status::Ok();
}

Result<MoeLayerSpec> ParseMoeLayer(const json& lj, const std::string& where) {
  DMOE_RETURN_IF_ERROR(
      CheckKeys(lj,
                {"type", "uid_prefix", "grid", "k_best", "k_min", "forward_timeout_ms",
                 "timeout_after_k_min_ms", "backward_k_min", "backward_timeout_ms", "pre_norm"},
                where));
  MoeLayerSpec m;
  if (!lj.contains("uid_prefix") || !lj["uid_prefix"].is_string()) {
    return InvalidArgumentError(where + ": missing string 'uid_prefix'");
  }
  m.uid_prefix = lj["uid_prefix"].get<std::string>();
  Result<GridPrefix> gp = ParseGridPrefix(m.uid_prefix + ".");
  if (!gp.ok() || !gp->indices.empty()) {
    return InvalidArgumentError(where + ": uid_prefix '" + m.uid_prefix +
                                "' is not a uid prefix such as 'ffn'");
  }
  if (!lj.contains("grid") || !lj["grid"].is_array() || lj["grid"].empty() ||
      lj["grid"].size() > kMaxUidIndices) {
    return InvalidArgumentError(where + ": 'grid' must list 1 to 4 dimension sizes");
  }
  int64_t cells = 1;
  for (const json& g : lj["grid"]) {
    if (!g.is_number_integer() || g.get<int64_t>() < 1 || g.get<int64_t>() > kMaxUidIndex + 1) {
      return InvalidArgumentError(where + ": grid sizes must be integers in 1..1000000");
    }
    m.grid.push_back(g.get<int64_t>());
    cells *= m.grid.back();
    if (cells > (1 << 24))
      return InvalidArgumentError(where + ": grid holds more than 2^24 experts");
  }
  DMOE_ASSIGN_OR_RETURN(m.k_best, IntField(lj, "k_best", where, 1, 64, 4));
  DMOE_ASSIGN_OR_RETURN(m.k_min, IntField(lj, "k_min", where, 0, m.k_best, 1));
  DMOE_ASSIGN_OR_RETURN(m.forward_timeout_ms,
                        IntField(lj, "forward_timeout_ms", where, 1, 600'000, 5000));
  DMOE_ASSIGN_OR_RETURN(m.timeout_after_k_min_ms,
                        IntField(lj, "timeout_after_k_min_ms", where, 0, 600'000, 500));
  DMOE_ASSIGN_OR_RETURN(m.backward_k_min, IntField(lj, "backward_k_min", where, 0, m.k_best, 1));
  DMOE_ASSIGN_OR_RETURN(m.backward_timeout_ms,
                        IntField(lj, "backward_timeout_ms", where, 1, 600'000, 5000));
  return m;
}

// One layer's type and own fields; its widths are the caller's.
Result<LayerSpec> ParseLayer(const json& lj, const std::string& where) {
  if (!lj.is_object() || !lj.contains("type") || !lj["type"].is_string()) {
    return InvalidArgumentError(where + ": must be an object with a string 'type'");
  }
  const std::string type_name = lj["type"].get<std::string>();
  std::optional<LayerType> type = ParseLayerType(type_name);
  if (!type) {
    return InvalidArgumentError(
        where + ": unknown type '" + type_name +
        "' (allowed: linear, relu, gelu, layer_norm, dropout, moe, residual_moe, residual_ffn, "
        "embedding, positions, attention, lm_head)");
  }
  LayerSpec l;
  l.type = *type;
  switch (l.type) {
    case LayerType::kLinear: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "out"}, where));
      DMOE_ASSIGN_OR_RETURN(l.out, IntField(lj, "out", where, 1, 1 << 20));
      break;
    }
    case LayerType::kRelu:
    case LayerType::kGelu:
    case LayerType::kLayerNorm:
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type"}, where));
      break;
    case LayerType::kDropout: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "p"}, where));
      DMOE_ASSIGN_OR_RETURN(l.p, ProbabilityField(lj, "p", where));
      break;
    }
    case LayerType::kMoe:
    case LayerType::kResidualMoe: {
      DMOE_ASSIGN_OR_RETURN(l.moe, ParseMoeLayer(lj, where));
      DMOE_ASSIGN_OR_RETURN(l.pre_norm, BoolField(lj, "pre_norm", where));
      if (l.pre_norm && l.type == LayerType::kMoe) {
        return InvalidArgumentError(where + ": 'pre_norm' belongs to residual_moe, not moe");
      }
      break;
    }
    case LayerType::kResidualFfn: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "hidden", "pre_norm"}, where));
      DMOE_ASSIGN_OR_RETURN(l.hidden, IntField(lj, "hidden", where, 1, 1 << 20));
      DMOE_ASSIGN_OR_RETURN(l.pre_norm, BoolField(lj, "pre_norm", where));
      break;
    }
    case LayerType::kEmbedding: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "dim"}, where));
      DMOE_ASSIGN_OR_RETURN(l.out, IntField(lj, "dim", where, 1, 1 << 16));
      break;
    }
    case LayerType::kPositions:
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type"}, where));
      break;
    case LayerType::kAttention: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "heads", "rotary"}, where));
      DMOE_ASSIGN_OR_RETURN(l.heads, IntField(lj, "heads", where, 1, 256));
      DMOE_ASSIGN_OR_RETURN(l.rotary, BoolField(lj, "rotary", where));
      break;
    }
    case LayerType::kLmHead: {
      DMOE_RETURN_IF_ERROR(CheckKeys(lj, {"type", "tied"}, where));
      DMOE_ASSIGN_OR_RETURN(l.tied, BoolField(lj, "tied", where));
      break;
    }
  }
  return l;
}

// Where a layer of a token model may stand, and the widths of a width-changing layer.
// `spec` holds the layers before it; `count` is how many the spec has.
Status CheckTokenLayer(const ModelSpec& spec, size_t count, LayerSpec& l,
                       const std::string& where) {
  const size_t index = spec.layers.size();
  const bool first = index == 0, last = index + 1 == count;
  if (first != (l.type == LayerType::kEmbedding)) {
    return InvalidArgumentError(where + (first ? ": a token model's first layer must be 'embedding'"
                                               : ": 'embedding' must be the first layer"));
  }
  if (last != (l.type == LayerType::kLmHead)) {
    return InvalidArgumentError(where + (last ? ": a token model's last layer must be 'lm_head'"
                                              : ": 'lm_head' must be the last layer"));
  }
  if (l.type == LayerType::kAttention && l.in_features % l.heads != 0) {
    return InvalidArgumentError(where + ": 'heads' is " + std::to_string(l.heads) +
                                ", which does not divide the width " +
                                std::to_string(l.in_features));
  }
  if (l.type == LayerType::kAttention && l.rotary && (l.in_features / l.heads) % 2 != 0) {
    return InvalidArgumentError(where +
                                ": 'rotary' needs an even head width (width / heads), not " +
                                std::to_string(l.in_features / l.heads));
  }
  if (l.type == LayerType::kLmHead && l.tied && l.in_features != spec.layers[0].out) {
    return InvalidArgumentError(where + ": a tied lm_head needs the embedding's width " +
                                std::to_string(spec.layers[0].out) + ", not " +
                                std::to_string(l.in_features));
  }
  if (l.type == LayerType::kAttention && l.rotary && (l.in_features / l.heads) % 2 != 0) {
    return InvalidArgumentError(where +
                                ": 'rotary' needs an even head width (width / heads), not " +
                                std::to_string(l.in_features / l.heads));
  }
  if (l.type == LayerType::kPositions) {
    for (const LayerSpec& before : spec.layers) {
      if (before.type == LayerType::kPositions) {
        return InvalidArgumentError(where + ": a model has at most one 'positions' layer");
      }
    }
    l.max_len = spec.max_len;
  }
  return Status::Ok();
}

}  // namespace

std::string_view LayerTypeName(LayerType type) {
  for (const auto& [t, spelling] : kLayerTypeNames) {
    if (t == type) return spelling;
  }
  return "unknown";
}

std::vector<std::string> ModelSpec::GridPrefixes() const {
  std::vector<std::string> out;
  for (const LayerSpec& l : layers) {
    if (!IsMoe(l.type)) continue;
    std::string p = l.moe.uid_prefix + ".";
    if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  }
  return out;
}

double ModelSpec::LocalParameterCount() const {
  double n = 0;
  for (const LayerSpec& l : layers) {
    const double in = static_cast<double>(l.in_features), out = static_cast<double>(l.out_features);
    switch (l.type) {
      case LayerType::kLinear:
        n += in * out + out;
        break;
      case LayerType::kLayerNorm:
        n += 2 * in;
        break;
      case LayerType::kMoe:
      case LayerType::kResidualMoe:
        for (int64_t g : l.moe.grid) n += (in + 1) * static_cast<double>(g);
        if (l.pre_norm) n += 2 * in;
        break;
      case LayerType::kEmbedding:
        n += in * out;
        break;
      case LayerType::kPositions:
        n += static_cast<double>(l.max_len) * in;
        break;
      case LayerType::kAttention:  // layer norm, qkv and output projections with biases
        n += 2 * in + (3 * in * in + 3 * in) + (in * in + in);
        break;
      case LayerType::kLmHead:
        if (!l.tied) n += in * out;
        break;
      case LayerType::kResidualFfn: {  // [norm], linear1, linear2 with biases, the ffn's norm
        const double h = static_cast<double>(l.hidden);
        n += (l.pre_norm ? 2 * in : 0) + (in * h + h) + (h * in + in) + 2 * in;
        break;
      }
      case LayerType::kRelu:
      case LayerType::kGelu:
      case LayerType::kDropout:
        break;
    }
  }
  return n;
}

std::string ModelSpec::ToJson() const {
  json layers_json = json::array();
  for (const LayerSpec& l : layers) {
    json j = {{"type", LayerTypeName(l.type)}};
    if (l.type == LayerType::kLinear) j["out"] = l.out;
    if (l.type == LayerType::kEmbedding) j["dim"] = l.out;
    if (l.type == LayerType::kDropout) j["p"] = l.p;
    if (l.type == LayerType::kAttention) j["heads"] = l.heads;
    if (l.type == LayerType::kAttention && l.rotary) j["rotary"] = true;
    if (l.type == LayerType::kLmHead) j["tied"] = l.tied;
    if (IsMoe(l.type)) {
      j["uid_prefix"] = l.moe.uid_prefix;
      j["grid"] = l.moe.grid;
      j["k_best"] = l.moe.k_best;
      j["k_min"] = l.moe.k_min;
      j["forward_timeout_ms"] = l.moe.forward_timeout_ms;
      j["timeout_after_k_min_ms"] = l.moe.timeout_after_k_min_ms;
      j["backward_k_min"] = l.moe.backward_k_min;
      j["backward_timeout_ms"] = l.moe.backward_timeout_ms;
      if (l.pre_norm) j["pre_norm"] = true;
    }
    if (l.type == LayerType::kResidualFfn) {
      j["hidden"] = l.hidden;
      if (l.pre_norm) j["pre_norm"] = true;
    }
    layers_json.push_back(j);
  }
  if (input == InputKind::kTokens) {
    return json{{"name", name},
                {"input", "tokens"},
                {"vocab", vocab},
                {"max_len", max_len},
                {"layers", layers_json}}
        .dump();
  }
  return json{{"name", name}, {"input_dim", input_dim}, {"layers", layers_json}}.dump();
}

Result<ModelSpec> ParseModelSpec(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return InvalidArgumentError("model spec is not a JSON object");
  ModelSpec spec;
  if (j.contains("input")) {
    if (j["input"] != "tokens" && j["input"] != "features") {
      return InvalidArgumentError("model spec: 'input' must be \"tokens\" or \"features\"");
    }
    if (j["input"] == "tokens") spec.input = InputKind::kTokens;
  }
  const bool tokens = spec.input == InputKind::kTokens;
  DMOE_RETURN_IF_ERROR(
      CheckKeys(j,
                tokens ? std::set<std::string>{"name", "input", "vocab", "max_len", "layers"}
                       : std::set<std::string>{"name", "input", "input_dim", "layers"},
                tokens ? "model spec with \"input\": \"tokens\"" : "model spec"));
  if (!j.contains("name") || !j["name"].is_string() || j["name"].get<std::string>().empty()) {
    return InvalidArgumentError("model spec: 'name' must be a non-empty string");
  }
  spec.name = j["name"].get<std::string>();
  if (tokens) {
    DMOE_ASSIGN_OR_RETURN(spec.vocab, IntField(j, "vocab", "model spec", 2, 1 << 20));
    DMOE_ASSIGN_OR_RETURN(spec.max_len, IntField(j, "max_len", "model spec", 1, 1 << 16));
  } else {
    DMOE_ASSIGN_OR_RETURN(spec.input_dim, IntField(j, "input_dim", "model spec", 1, 1 << 20));
  }
  if (!j.contains("layers") || !j["layers"].is_array() || j["layers"].empty()) {
    return InvalidArgumentError("model spec: 'layers' must be a non-empty list");
  }
  const size_t count = j["layers"].size();
  if (count > 256) return InvalidArgumentError("model spec: more than 256 layers");
  int64_t width = tokens ? spec.vocab : spec.input_dim;
  for (size_t i = 0; i < count; ++i) {
    const std::string where = "layer " + std::to_string(i);
    DMOE_ASSIGN_OR_RETURN(LayerSpec l, ParseLayer(j["layers"][i], where));
    l.in_features = width;
    if (l.type == LayerType::kLinear || l.type == LayerType::kEmbedding) width = l.out;
    if (l.type == LayerType::kLmHead) width = spec.vocab;
    l.out_features = width;
    if (tokens) {
      DMOE_RETURN_IF_ERROR(CheckTokenLayer(spec, count, l, where));
    } else if (IsTokenLayer(l.type)) {
      return InvalidArgumentError(where + ": '" + std::string(LayerTypeName(l.type)) +
                                  "' belongs to a token model (\"input\": \"tokens\")");
    }
    spec.layers.push_back(std::move(l));
  }
  return spec;
}

}  // namespace dmoe::model
