// Database: the one RocksDB database of a process (`--db DIR`), shared by ExpertStore and KvStore.
//
// This is the only place that talks to RocksDB. Its column families are fixed by purpose
// (ColumnFamily); every rocksdb::Status is converted to a dmoe::Status here and goes no further.
// Most code never touches a Database directly: ExpertStore::Open and KvStore::Open open one, and a
// process that needs both shares it: `KvStore node_state(expert_store->database());`.
//
// The directory is locked while open. A second Open of the same directory, from another process or
// from this one, answers kUnavailable "database DIR is in use by another process (lock held)".
//
// A Database is safe for concurrent use from multiple threads, except Close, which the caller must
// not run concurrently with any other call.
#ifndef DMOE_STORAGE_DATABASE_H_
#define DMOE_STORAGE_DATABASE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe::storage {

// Column families by purpose. The names are the on-disk names.
enum class ColumnFamily {
  kExperts,    // "experts": checkpoint manifests and tensor bytes (ExpertStore)
  kMeta,       // "meta": the kept checkpoint steps of each expert (ExpertStore)
  kModels,     // "models": router models (KvStore)
  kNodeState,  // "node_state": DHT routing table and records (KvStore)
};
inline constexpr int kNumColumnFamilies = 4;

std::string_view ColumnFamilyName(ColumnFamily cf);

// The smallest key above every key that starts with `prefix`, for range deletes and scan bounds;
// empty when none exists (an empty prefix, or one of only 0xff bytes).
std::string PrefixSuccessor(std::string_view prefix);

struct DatabaseOptions {
  // When false, opening a directory that holds no database answers kNotFound.
  bool create_if_missing = true;
};

class Database {
 public:
  // A consistent read view: reads through it see the database as it was when it was taken.
  // Must be destroyed before the Database that made it.
  class Snapshot {
   public:
    ~Snapshot();
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;

   private:
    friend class Database;
    struct Rep;
    explicit Snapshot(std::unique_ptr<Rep> rep);
    std::unique_ptr<Rep> rep_;
  };

  // Updates applied atomically by Write: after a crash either all of them are visible or none.
  // Bound to the database it is made for; not thread-safe, build it on one thread.
  class WriteBatch {
   public:
    explicit WriteBatch(const Database& db);
    ~WriteBatch();
    WriteBatch(const WriteBatch&) = delete;
    WriteBatch& operator=(const WriteBatch&) = delete;

    // kInvalidArgument when the value is too large for RocksDB (4 GiB and more).
    Status Put(ColumnFamily cf, std::string_view key, std::string_view value);
    Status Put(ColumnFamily cf, std::string_view key, std::span<const uint8_t> value);
    Status Delete(ColumnFamily cf, std::string_view key);
    // Deletes every key k with begin <= k < end (bytewise order).
    Status DeleteRange(ColumnFamily cf, std::string_view begin, std::string_view end);
    // Size of the batch's encoding in bytes.
    size_t ByteSize() const;

   private:
    friend class Database;
    struct Rep;
    std::unique_ptr<Rep> rep_;
  };

  // Opens or creates the database in directory `path` with every ColumnFamily (and any other column
  // family found on disk, which is opened and left alone).
  static Result<std::shared_ptr<Database>> Open(const std::string& path,
                                                const DatabaseOptions& options = {});

  // Closes if still open; errors are logged.
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Releases the directory lock. Every call after Close answers kUnavailable. Idempotent.
  Status Close();

  const std::string& path() const;

  std::unique_ptr<Snapshot> NewSnapshot() const;

  // The value of `key`; kNotFound when absent. `snapshot` may be null (read the newest state).
  Result<std::string> Get(ColumnFamily cf, std::string_view key,
                          const Snapshot* snapshot = nullptr) const;
  // As Get, into a byte vector (one copy instead of two for large values).
  Result<std::vector<uint8_t>> GetBytes(ColumnFamily cf, std::string_view key,
                                        const Snapshot* snapshot = nullptr) const;

  // Calls visit(key, value) for each key that starts with `prefix`, in bytewise key order, until
  // visit returns false. The views are valid only during the call.
  Status Scan(ColumnFamily cf, std::string_view prefix,
              const std::function<bool(std::string_view key, std::string_view value)>& visit,
              const Snapshot* snapshot = nullptr) const;

  // Applies `batch` atomically. With sync the write-ahead log is fsynced before returning, so the
  // batch survives a kill -9 or a power loss once Write has returned OK.
  Status Write(WriteBatch& batch, bool sync);

 private:
  struct Rep;
  explicit Database(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

}  // namespace dmoe::storage

#endif  // DMOE_STORAGE_DATABASE_H_
