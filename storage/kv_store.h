// KvStore: small string keys and values in a named column family of the process's database, for the
// state other modules persist: the DHT's routing table and records ("node_state"), the router's
// published models ("models").
//
// Keys and values are arbitrary bytes; keys sort bytewise, so a key layout like
// "record/<key>/<subkey>" makes Scan("record/") list all records. A write with sync survives kill
// -9 and power loss once it returns OK; without sync it survives kill -9 of the process (the write
// is in the OS) but may be lost in a power loss, which suits state that is rebuilt anyway, such as
// DHT records.
//
// Every method answers kInvalidArgument for a column family other than "node_state" and "models".
// All methods are safe to call concurrently from any thread. They block on disk I/O.
#ifndef DMOE_STORAGE_KV_STORE_H_
#define DMOE_STORAGE_KV_STORE_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "storage/database.h"

namespace dmoe::storage {

class KvStore {
 public:
  // Opens (creating when missing) the database in directory `path`. kUnavailable when another
  // process, or another Open in this one, holds the directory. A process that also keeps experts
  // opens the ExpertStore and builds its KvStore on expert_store->database() instead.
  static Result<std::unique_ptr<KvStore>> Open(const std::string& path);
  // A store on an already open database, shared with others.
  explicit KvStore(std::shared_ptr<Database> db);

  Status Put(std::string_view cf, std::string_view key, std::string_view value, bool sync);
  // kNotFound when `key` is absent.
  Result<std::string> Get(std::string_view cf, std::string_view key) const;
  // Deleting an absent key is OK.
  Status Delete(std::string_view cf, std::string_view key, bool sync = false);
  // Every (key, value) whose key starts with `prefix` (all of them for ""), sorted by key.
  Result<std::vector<std::pair<std::string, std::string>>> Scan(std::string_view cf,
                                                                std::string_view prefix) const;

  // Atomically deletes every key that starts with `prefix` and puts `entries` (whose keys need not
  // start with the prefix): e.g. replacing a saved routing table in one write.
  Status ReplacePrefix(std::string_view cf, std::string_view prefix,
                       const std::vector<std::pair<std::string, std::string>>& entries, bool sync);

  const std::shared_ptr<Database>& database() const { return db_; }

 private:
  std::shared_ptr<Database> db_;
};

}  // namespace dmoe::storage

#endif  // DMOE_STORAGE_KV_STORE_H_
