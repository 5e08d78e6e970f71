// ModelStore: the models trainers publish to the router (PROTOCOL section 5), kept in the
// "models" column family. A model is its latest version only: a name, a version that must grow, the
// JSON model spec, and the state dict as a safetensors blob. Publishing replaces the previous
// version in one synced, atomic write, so a crash leaves either the old or the new model whole.
//
// Thread-safe: Publish serializes itself so that two trainers racing with the same version cannot
// both win.
#ifndef DMOE_STORAGE_MODEL_STORE_H_
#define DMOE_STORAGE_MODEL_STORE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "storage/kv_store.h"

namespace dmoe::storage {

struct ModelInfo {
  std::string name;
  int64_t version = 0;
  std::string spec_json;
  int64_t published_unix_ms = 0;
  std::string publisher;  // hex public key of the signer, or "" when unsigned
};

struct Model {
  ModelInfo info;
  std::vector<uint8_t> state;  // safetensors blob of the state dict
};

class ModelStore {
 public:
  explicit ModelStore(std::shared_ptr<KvStore> kv);

  // kInvalidArgument for a bad name ([A-Za-z0-9_.-], 1 to 64 characters) or a version not above
  // the published one (naming both).
  Status Publish(const Model& model);
  // kNotFound for an unknown name.
  Result<Model> Get(const std::string& name) const;
  Result<ModelInfo> GetInfo(const std::string& name) const;
  // Every model, sorted by name.
  Result<std::vector<ModelInfo>> List() const;

  static Status ValidateName(const std::string& name);

 private:
  std::shared_ptr<KvStore> kv_;
  std::mutex publish_mu_;
};

}  // namespace dmoe::storage

#endif  // DMOE_STORAGE_MODEL_STORE_H_
