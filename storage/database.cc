#include "storage/database.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <limits>
#include <utility>

namespace dmoe::storage {
namespace {

constexpr std::array<std::string_view, kNumColumnFamilies> kFamilyNames = {"experts", "meta",
                                                                           "models", "node_state"};

// Values at or above this size go to blob files instead of SST blocks, so a checkpoint's tensors
// are written once rather than rewritten by every compaction.
constexpr uint64_t kMinBlobSize = 64 * 1024;

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
rocksdb::Slice ToSlice(std::span<const uint8_t> s) {
  return rocksdb::Slice(reinterpret_cast<const char*>(s.data()), s.size());
}

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// The module edge: every rocksdb::Status becomes a dmoe::Status here, with the database path in the
// message so that a person can tell which --db is at fault.
Status FromRocks(const rocksdb::Status& s, const std::string& path, std::string_view what) {
  if (s.ok()) return Status::Ok();
  const std::string detail = s.ToString();
  // RocksDB reports its LOCK file held by another process ("While lock file: DIR/LOCK: Resource
  // temporarily unavailable") or by this one ("lock hold by current process ... DIR/LOCK").
  if (s.IsIOError() && (Contains(detail, "/LOCK") || Contains(detail, "lock hold"))) {
    return UnavailableError("database " + path + " is in use by another process (lock held)");
  }
  if (s.IsNoSpace()) {
    return ResourceExhaustedError(std::string(what) + " in database " + path +
                                  " failed: no space left on device (" + detail + ")");
  }
  if (s.IsCorruption()) {
    return InternalError("database " + path + " is corrupt: " + detail);
  }
  if (s.IsNotFound()) return NotFoundError(std::string(what) + ": " + detail);
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) {
    return UnavailableError(std::string(what) + " in database " + path + " failed: " + detail);
  }
  return InternalError(std::string(what) + " in database " + path + " failed: " + detail);
}

Status DatabaseClosedError() { return UnavailableError("the database is closed"); }

rocksdb::ColumnFamilyOptions FamilyOptions(std::string_view name) {
  rocksdb::ColumnFamilyOptions options;
  if (name == "experts") {
    options.enable_blob_files = true;
    options.min_blob_size = kMinBlobSize;
    options.enable_blob_garbage_collection = true;
  }
  return options;
}

}  // namespace

std::string_view ColumnFamilyName(ColumnFamily cf) { return kFamilyNames[static_cast<int>(cf)]; }

std::string PrefixSuccessor(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<uint8_t>(end.back()) == 0xff) end.pop_back();
  if (!end.empty()) end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
  return end;
}

struct Database::Rep {
  std::string path;
  std::unique_ptr<rocksdb::DB> db;
  // Indexed by ColumnFamily.
  std::array<rocksdb::ColumnFamilyHandle*, kNumColumnFamilies> families{};
  // Every handle opened, ours and unknown ones, destroyed at Close.
  std::vector<rocksdb::ColumnFamilyHandle*> handles;

  rocksdb::ColumnFamilyHandle* Family(ColumnFamily cf) const {
    return families[static_cast<int>(cf)];
  }
};

// ---- Snapshot ----

struct Database::Snapshot::Rep {
  rocksdb::DB* db = nullptr;
  const rocksdb::Snapshot* snapshot = nullptr;
};

Database::Snapshot::Snapshot(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

Database::Snapshot::~Snapshot() {
  if (rep_->db != nullptr && rep_->snapshot != nullptr) rep_->db->ReleaseSnapshot(rep_->snapshot);
}

// ---- WriteBatch ----

struct Database::WriteBatch::Rep {
  const Database::Rep* db = nullptr;
  rocksdb::WriteBatch batch;
};

Database::WriteBatch::WriteBatch(const Database& db) : rep_(std::make_unique<Rep>()) {
  rep_->db = db.rep_.get();
}
Database::WriteBatch::~WriteBatch() = default;

Status Database::WriteBatch::Put(ColumnFamily cf, std::string_view key, std::string_view value) {
  return Put(
      cf, key,
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data()), value.size()));
}

Status Database::WriteBatch::Put(ColumnFamily cf, std::string_view key,
                                 std::span<const uint8_t> value) {
  if (rep_->db->db == nullptr) return DatabaseClosedError();
  if (value.size() >= std::numeric_limits<uint32_t>::max()) {
    return InvalidArgumentError("a value of " + std::to_string(value.size()) +
                                " bytes is too large; the database holds values below 4 GiB");
  }
  return FromRocks(rep_->batch.Put(rep_->db->Family(cf), ToSlice(key), ToSlice(value)),
                   rep_->db->path, "adding a value to a write batch");
}

Status Database::WriteBatch::Delete(ColumnFamily cf, std::string_view key) {
  if (rep_->db->db == nullptr) return DatabaseClosedError();
  return FromRocks(rep_->batch.Delete(rep_->db->Family(cf), ToSlice(key)), rep_->db->path,
                   "adding a delete to a write batch");
}

Status Database::WriteBatch::DeleteRange(ColumnFamily cf, std::string_view begin,
                                         std::string_view end) {
  if (rep_->db->db == nullptr) return DatabaseClosedError();
  return FromRocks(rep_->batch.DeleteRange(rep_->db->Family(cf), ToSlice(begin), ToSlice(end)),
                   rep_->db->path, "adding a range delete to a write batch");
}

size_t Database::WriteBatch::ByteSize() const { return rep_->batch.GetDataSize(); }

// ---- Database ----

Database::Database(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

Database::~Database() {
  Status s = Close();
  if (!s.ok()) spdlog::error("closing database {}: {}", rep_->path, s.ToString());
}

Result<std::shared_ptr<Database>> Database::Open(const std::string& path,
                                                 const DatabaseOptions& options) {
  if (path.empty()) return InvalidArgumentError("the database path is empty");
  // RocksDB creates the directory and its LOCK file before it finds no database there; a reader
  // such as `dmoe export` must leave a mistyped path untouched, so look first.
  std::error_code ec;
  if (!options.create_if_missing && !std::filesystem::exists(path + "/CURRENT", ec)) {
    return NotFoundError("no database in " + path + " (and create_if_missing is false)");
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  db_options.keep_log_file_num = 4;
  db_options.max_log_file_size = 8 << 20;

  // Open every family already on disk, or RocksDB refuses the database; then add ours.
  std::vector<std::string> names;
  rocksdb::Status listed = rocksdb::DB::ListColumnFamilies(db_options, path, &names);
  if (!listed.ok()) {
    // No database yet (or an unreadable one, which Open below reports properly).
    names = {rocksdb::kDefaultColumnFamilyName};
  }
  for (std::string_view ours : kFamilyNames) {
    if (std::find(names.begin(), names.end(), ours) == names.end()) names.emplace_back(ours);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) descriptors.emplace_back(name, FamilyOptions(name));

  rocksdb::DB* raw = nullptr;
  auto rep = std::make_unique<Rep>();
  rep->path = path;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, descriptors, &rep->handles, &raw);
  if (!s.ok()) {
    if (s.IsInvalidArgument() && Contains(s.ToString(), "does not exist")) {
      return NotFoundError("no database in " + path + " (and create_if_missing is false)");
    }
    return FromRocks(s, path, "opening");
  }
  rep->db.reset(raw);
  for (rocksdb::ColumnFamilyHandle* handle : rep->handles) {
    for (int i = 0; i < kNumColumnFamilies; ++i) {
      if (handle->GetName() == kFamilyNames[i]) rep->families[i] = handle;
    }
  }
  return std::shared_ptr<Database>(new Database(std::move(rep)));
}

Status Database::Close() {
  if (rep_->db == nullptr) return Status::Ok();
  for (rocksdb::ColumnFamilyHandle* handle : rep_->handles) {
    rep_->db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  rep_->handles.clear();
  rep_->families.fill(nullptr);
  rocksdb::Status s = rep_->db->Close();
  rep_->db.reset();
  return FromRocks(s, rep_->path, "closing");
}

const std::string& Database::path() const { return rep_->path; }

std::unique_ptr<Database::Snapshot> Database::NewSnapshot() const {
  auto rep = std::make_unique<Snapshot::Rep>();
  if (rep_->db != nullptr) {
    rep->db = rep_->db.get();
    rep->snapshot = rep_->db->GetSnapshot();
  }
  return std::unique_ptr<Snapshot>(new Snapshot(std::move(rep)));
}

namespace {

rocksdb::ReadOptions ReadOptionsAt(const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions read_options;
  read_options.verify_checksums = true;
  read_options.snapshot = snapshot;  // Null reads the newest state.
  return read_options;
}

}  // namespace

Result<std::string> Database::Get(ColumnFamily cf, std::string_view key,
                                  const Snapshot* snapshot) const {
  if (rep_->db == nullptr) return DatabaseClosedError();
  std::string value;
  rocksdb::Status s = rep_->db->Get(ReadOptionsAt(snapshot ? snapshot->rep_->snapshot : nullptr),
                                    rep_->Family(cf), ToSlice(key), &value);
  if (s.IsNotFound()) return NotFoundError("no such key");
  DMOE_RETURN_IF_ERROR(FromRocks(s, rep_->path, "reading"));
  return value;
}

Result<std::vector<uint8_t>> Database::GetBytes(ColumnFamily cf, std::string_view key,
                                                const Snapshot* snapshot) const {
  if (rep_->db == nullptr) return DatabaseClosedError();
  rocksdb::PinnableSlice value;
  rocksdb::Status s = rep_->db->Get(ReadOptionsAt(snapshot ? snapshot->rep_->snapshot : nullptr),
                                    rep_->Family(cf), ToSlice(key), &value);
  if (s.IsNotFound()) return NotFoundError("no such key");
  DMOE_RETURN_IF_ERROR(FromRocks(s, rep_->path, "reading"));
  const auto* begin = reinterpret_cast<const uint8_t*>(value.data());
  return std::vector<uint8_t>(begin, begin + value.size());
}

Status Database::Scan(ColumnFamily cf, std::string_view prefix,
                      const std::function<bool(std::string_view, std::string_view)>& visit,
                      const Snapshot* snapshot) const {
  if (rep_->db == nullptr) return DatabaseClosedError();
  rocksdb::ReadOptions read_options = ReadOptionsAt(snapshot ? snapshot->rep_->snapshot : nullptr);
  // The upper bound lets RocksDB stop at the end of the prefix instead of reading the next block.
  const std::string end = PrefixSuccessor(prefix);
  rocksdb::Slice end_slice(end);
  if (!end.empty()) read_options.iterate_upper_bound = &end_slice;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(read_options, rep_->Family(cf)));
  for (it->Seek(ToSlice(prefix)); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    if (!key.starts_with(prefix)) break;
    if (!visit(key, std::string_view(it->value().data(), it->value().size()))) break;
  }
  return FromRocks(it->status(), rep_->path, "scanning");
}

Status Database::Write(WriteBatch& batch, bool sync) {
  if (rep_->db == nullptr) return DatabaseClosedError();
  if (batch.rep_->db != rep_.get()) {
    return InternalError("a write batch was applied to a database it was not made for");
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = sync;
  return FromRocks(rep_->db->Write(write_options, &batch.rep_->batch), rep_->path, "writing");
}

}  // namespace dmoe::storage
