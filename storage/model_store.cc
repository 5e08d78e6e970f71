#include "storage/model_store.h"

#include <nlohmann/json.hpp>

namespace dmoe::storage {
namespace {

constexpr char kFamily[] = "models";

std::string MetaKey(const std::string& name) { return "model/" + name + "/meta"; }
std::string StateKey(const std::string& name) { return "model/" + name + "/state"; }

Result<ModelInfo> ParseInfo(const std::string& name, const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("version") || !j.contains("spec")) {
    return InternalError("stored metadata of model " + name + " is corrupt");
  }
  ModelInfo info;
  info.name = name;
  info.version = j["version"].get<int64_t>();
  info.spec_json = j["spec"].get<std::string>();
  info.published_unix_ms = j.value("published_unix_ms", int64_t{0});
  info.publisher = j.value("publisher", std::string());
  return info;
}

}  // namespace

ModelStore::ModelStore(std::shared_ptr<KvStore> kv) : kv_(std::move(kv)) {}

Status ModelStore::ValidateName(const std::string& name) {
  if (name.empty() || name.size() > 64) {
    return InvalidArgumentError("model name must be 1 to 64 characters, got " +
                                std::to_string(name.size()));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    if (!ok) return InvalidArgumentError("model name may hold only letters, digits, '_', '-', '.'");
  }
  return Status::Ok();
}

Status ModelStore::Publish(const Model& model) {
  DMOE_RETURN_IF_ERROR(ValidateName(model.info.name));
  std::lock_guard<std::mutex> lock(publish_mu_);
  Result<ModelInfo> current = GetInfo(model.info.name);
  if (current.ok() && model.info.version <= current->version) {
    return InvalidArgumentError("model " + model.info.name + " version " +
                                std::to_string(model.info.version) +
                                " is not above the published version " +
                                std::to_string(current->version) + "; versions must grow");
  }
  if (!current.ok() && current.status().code() != Code::kNotFound) return current.status();
  nlohmann::json meta = {{"version", model.info.version},
                         {"spec", model.info.spec_json},
                         {"published_unix_ms", model.info.published_unix_ms},
                         {"publisher", model.info.publisher}};
  std::string state(model.state.begin(), model.state.end());
  return kv_->ReplacePrefix(
      kFamily, "model/" + model.info.name + "/",
      {{MetaKey(model.info.name), meta.dump()}, {StateKey(model.info.name), state}},
      /*sync=*/true);
}

Result<ModelInfo> ModelStore::GetInfo(const std::string& name) const {
  DMOE_RETURN_IF_ERROR(ValidateName(name));
  Result<std::string> meta = kv_->Get(kFamily, MetaKey(name));
  if (!meta.ok()) {
    if (meta.status().code() == Code::kNotFound) return NotFoundError("no model named " + name);
    return meta.status();
  }
  return ParseInfo(name, *meta);
}

Result<Model> ModelStore::Get(const std::string& name) const {
  DMOE_ASSIGN_OR_RETURN(ModelInfo info, GetInfo(name));
  DMOE_ASSIGN_OR_RETURN(std::string state, kv_->Get(kFamily, StateKey(name)));
  return Model{std::move(info), std::vector<uint8_t>(state.begin(), state.end())};
}

Result<std::vector<ModelInfo>> ModelStore::List() const {
  DMOE_ASSIGN_OR_RETURN(auto entries, kv_->Scan(kFamily, "model/"));
  std::vector<ModelInfo> out;
  for (const auto& [key, value] : entries) {
    const std::string suffix = "/meta";
    if (key.size() <= suffix.size() ||
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    std::string name = key.substr(6, key.size() - 6 - suffix.size());
    DMOE_ASSIGN_OR_RETURN(ModelInfo info, ParseInfo(name, value));
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace dmoe::storage
