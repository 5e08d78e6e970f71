#include "storage/kv_store.h"

#include <utility>

namespace dmoe::storage {
namespace {

// Only the families meant for generic state: "experts" and "meta" belong to ExpertStore, whose
// invariants a stray write would break.
Result<ColumnFamily> ParseFamily(std::string_view cf) {
  if (cf == ColumnFamilyName(ColumnFamily::kNodeState)) return ColumnFamily::kNodeState;
  if (cf == ColumnFamilyName(ColumnFamily::kModels)) return ColumnFamily::kModels;
  return InvalidArgumentError("column family '" + std::string(cf) +
                              "' is not open to KvStore; use 'node_state' or 'models'");
}

}  // namespace

Result<std::unique_ptr<KvStore>> KvStore::Open(const std::string& path) {
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<Database> db, Database::Open(path));
  return std::make_unique<KvStore>(std::move(db));
}

KvStore::KvStore(std::shared_ptr<Database> db) : db_(std::move(db)) {}

Status KvStore::Put(std::string_view cf, std::string_view key, std::string_view value, bool sync) {
  DMOE_ASSIGN_OR_RETURN(ColumnFamily family, ParseFamily(cf));
  Database::WriteBatch batch(*db_);
  DMOE_RETURN_IF_ERROR(batch.Put(family, key, value));
  return db_->Write(batch, sync);
}

Result<std::string> KvStore::Get(std::string_view cf, std::string_view key) const {
  DMOE_ASSIGN_OR_RETURN(ColumnFamily family, ParseFamily(cf));
  Result<std::string> value = db_->Get(family, key);
  if (value.status().code() == Code::kNotFound) {
    return NotFoundError("no key '" + std::string(key) + "' in column family " + std::string(cf));
  }
  return value;
}

Status KvStore::Delete(std::string_view cf, std::string_view key, bool sync) {
  DMOE_ASSIGN_OR_RETURN(ColumnFamily family, ParseFamily(cf));
  Database::WriteBatch batch(*db_);
  DMOE_RETURN_IF_ERROR(batch.Delete(family, key));
  return db_->Write(batch, sync);
}

Result<std::vector<std::pair<std::string, std::string>>> KvStore::Scan(
    std::string_view cf, std::string_view prefix) const {
  DMOE_ASSIGN_OR_RETURN(ColumnFamily family, ParseFamily(cf));
  std::vector<std::pair<std::string, std::string>> entries;
  DMOE_RETURN_IF_ERROR(db_->Scan(family, prefix, [&](std::string_view key, std::string_view value) {
    entries.emplace_back(key, value);
    return true;
  }));
  return entries;
}

Status KvStore::ReplacePrefix(std::string_view cf, std::string_view prefix,
                              const std::vector<std::pair<std::string, std::string>>& entries,
                              bool sync) {
  DMOE_ASSIGN_OR_RETURN(ColumnFamily family, ParseFamily(cf));
  Database::WriteBatch batch(*db_);
  const std::string end = PrefixSuccessor(prefix);
  if (end.empty()) {
    // No upper bound exists (empty or all-0xff prefix): delete key by key.
    DMOE_ASSIGN_OR_RETURN(auto existing, Scan(cf, prefix));
    for (const auto& entry : existing) DMOE_RETURN_IF_ERROR(batch.Delete(family, entry.first));
  } else {
    DMOE_RETURN_IF_ERROR(batch.DeleteRange(family, prefix, end));
  }
  // Puts come after the delete in the batch, so they survive it.
  for (const auto& [key, value] : entries) DMOE_RETURN_IF_ERROR(batch.Put(family, key, value));
  return db_->Write(batch, sync);
}

}  // namespace dmoe::storage
