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

constexpr std::array<std::pair<LayerType, std::string_view>, 7> kLayerTypeNames = {{
    {LayerType::kLinear, "linear"},
    {LayerType::kRelu, "relu"},
    {LayerType::kGelu, "gelu"},
    {LayerType::kLayerNorm, "layer_norm"},
    {LayerType::kDropout, "dropout"},
    {LayerType::kMoe, "moe"},
    {LayerType::kResidualMoe, "residual_moe"},
}};

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
                 "timeout_after_k_min_ms", "backward_k_min", "backward_timeout_ms"},
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
        "' (allowed: linear, relu, gelu, layer_norm, dropout, moe, residual_moe)");
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
      break;
    }
  }
  return l;
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

std::string ModelSpec::ToJson() const {
  json layers_json = json::array();
  for (const LayerSpec& l : layers) {
    json j = {{"type", LayerTypeName(l.type)}};
    if (l.type == LayerType::kLinear) j["out"] = l.out;
    if (l.type == LayerType::kDropout) j["p"] = l.p;
    if (IsMoe(l.type)) {
      j["uid_prefix"] = l.moe.uid_prefix;
      j["grid"] = l.moe.grid;
      j["k_best"] = l.moe.k_best;
      j["k_min"] = l.moe.k_min;
      j["forward_timeout_ms"] = l.moe.forward_timeout_ms;
      j["timeout_after_k_min_ms"] = l.moe.timeout_after_k_min_ms;
      j["backward_k_min"] = l.moe.backward_k_min;
      j["backward_timeout_ms"] = l.moe.backward_timeout_ms;
    }
    layers_json.push_back(j);
  }
  return json{{"name", name}, {"input_dim", input_dim}, {"layers", layers_json}}.dump();
}

Result<ModelSpec> ParseModelSpec(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return InvalidArgumentError("model spec is not a JSON object");
  DMOE_RETURN_IF_ERROR(CheckKeys(j, {"name", "input_dim", "layers"}, "model spec"));
  ModelSpec spec;
  if (!j.contains("name") || !j["name"].is_string() || j["name"].get<std::string>().empty()) {
    return InvalidArgumentError("model spec: 'name' must be a non-empty string");
  }
  spec.name = j["name"].get<std::string>();
  DMOE_ASSIGN_OR_RETURN(spec.input_dim, IntField(j, "input_dim", "model spec", 1, 1 << 20));
  if (!j.contains("layers") || !j["layers"].is_array() || j["layers"].empty()) {
    return InvalidArgumentError("model spec: 'layers' must be a non-empty list");
  }
  if (j["layers"].size() > 256) return InvalidArgumentError("model spec: more than 256 layers");
  int64_t width = spec.input_dim;
  for (size_t i = 0; i < j["layers"].size(); ++i) {
    DMOE_ASSIGN_OR_RETURN(LayerSpec l, ParseLayer(j["layers"][i], "layer " + std::to_string(i)));
    l.in_features = width;
    if (l.type == LayerType::kLinear) width = l.out;
    l.out_features = width;
    spec.layers.push_back(std::move(l));
  }
  return spec;
}

}  // namespace dmoe::model
