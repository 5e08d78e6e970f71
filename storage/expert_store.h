// ExpertStore: durable, versioned checkpoints of experts, in the process's RocksDB database.
//
// A checkpoint is everything needed to resume an expert: its tensors (parameters and optimizer
// state alike, told apart only by name), its optimizer step, and string metadata (schema,
// learning-rate state,
// ...). The store does not interpret tensors; it keeps their bytes with a dtype and shape so that
// Export can write a plain .safetensors file any framework reads. By convention, names are
// "param/<name>" for parameters and "optim/<name>" for optimizer state (e.g. "param/ffn.0.weight",
// "optim/ffn.0.weight.exp_avg"), so `dmoe export` output reads naturally in PyTorch.
//
// Durability: SaveCheckpoint writes one checkpoint as one atomic, fsynced RocksDB write batch. Once
// it returns OK the checkpoint survives kill -9 and power loss; if the process dies during the
// call, the database holds either the whole new checkpoint or none of it. Every checkpoint carries
// a BLAKE2b-256 checksum over all its contents, verified on every load.
//
// Usage:
//   DMOE_ASSIGN_OR_RETURN(std::unique_ptr<ExpertStore> store,
//                         ExpertStore::Open(db_dir, {.clock = &clock}));
//   DMOE_RETURN_IF_ERROR(store->SaveCheckpoint("ffn.3.14", tensors, step, {{"schema", "ffn-v1"}}));
//   Result<Checkpoint> latest = store->LoadLatest("ffn.3.14");  // kNotFound before the first save
//
// Thread-safety: every method except Close may be called concurrently from any thread. Saves are
// serialized internally; loads read a consistent snapshot and never see a half-written or
// half-deleted checkpoint. Calls block on disk I/O (a save waits for fsync), so do not make them on
// a network thread; run them on a storage executor (DESIGN.md, Threads).
#ifndef DMOE_STORAGE_EXPERT_STORE_H_
#define DMOE_STORAGE_EXPERT_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "storage/database.h"
#include "tensor/safetensors.h"

namespace dmoe::storage {

struct ExpertStoreOptions {
  // Checkpoints kept per expert, newest by step. Saving one more deletes the oldest in the same
  // atomic write. Must be at least 1.
  int keep_checkpoints = 3;
  // When false, Open of a directory without a database answers kNotFound.
  bool create_if_missing = true;
  // Stamps Checkpoint::created_unix_ms: the process's clock (a FakeClock in a test about time).
  // Required: Open refuses a missing one with kInvalidArgument. Must outlive the store.
  const Clock* clock = nullptr;
};

// A tensor of a loaded checkpoint; owns its bytes (little-endian, as in safetensors).
struct NamedTensor {
  std::string name;
  safetensors::DType dtype = safetensors::DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  // A view for SaveCheckpoint or safetensors::Encode; valid while this tensor is alive and
  // unchanged.
  safetensors::TensorRef Ref() const { return {name, dtype, shape, data}; }
};

// Views of `tensors`, in order, for SaveCheckpoint.
std::vector<safetensors::TensorRef> RefsOf(const std::vector<NamedTensor>& tensors);

struct Checkpoint {
  std::string uid;
  int64_t step = 0;
  // When it was saved, by the store's clock.
  int64_t created_unix_ms = 0;
  std::map<std::string, std::string> metadata;
  // In the order they were given to SaveCheckpoint.
  std::vector<NamedTensor> tensors;
  // BLAKE2b-256 over all of the above; see CheckpointChecksum.
  Hash256 checksum{};

  // The tensor called `name`, or nullptr.
  const NamedTensor* Find(std::string_view name) const;
};

// The checksum a checkpoint with these contents carries (the `checksum` field itself is ignored).
// Lets a reader check a checkpoint against contents it expects.
Hash256 CheckpointChecksum(const Checkpoint& checkpoint);

struct ExpertSummary {
  std::string uid;
  int64_t latest_step = 0;
  // Every kept checkpoint's step, ascending; the last one is latest_step.
  std::vector<int64_t> steps;
};

class ExpertStore {
 public:
  // Opens (creating when allowed) the database in directory `path` and owns it. kUnavailable when
  // another process, or another Open in this one, holds the directory; kInvalidArgument for bad
  // options (no clock, keep_checkpoints below 1), checked before the directory is touched.
  static Result<std::unique_ptr<ExpertStore>> Open(const std::string& path,
                                                   const ExpertStoreOptions& options);
  // A store on an already open database, shared with other users such as KvStore.
  // options.create_if_missing is ignored.
  static Result<std::unique_ptr<ExpertStore>> Open(std::shared_ptr<Database> db,
                                                   const ExpertStoreOptions& options);

  // Releases the database (closing it if no one else holds it).
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Releases the database, closing it and its directory lock when this store was its last holder,
  // and reports the close error. Must not run concurrently with another call on this store; every
  // call after it answers kUnavailable. Idempotent.
  Status Close();

  // Saves a checkpoint of `uid` (a valid expert uid, PROTOCOL section 1) at `step` >= 0 in one
  // synced, atomic write, and in that same write deletes its checkpoints beyond the newest
  // keep_checkpoints. Saving the latest step again replaces that checkpoint (e.g. a shutdown with
  // no training since the last periodic save); a step older than the latest is kInvalidArgument.
  // Also kInvalidArgument: a tensor whose bytes do not match its dtype and shape, a name that is
  // empty, longer than 256 bytes, not printable UTF-8 or repeated, a rank above 8, BOOL bytes other
  // than 0 and 1, metadata that is not UTF-8, or the metadata keys "uid" and "step", which Export
  // writes itself. The tensors are copied; the caller keeps ownership.
  Status SaveCheckpoint(std::string_view uid, const std::vector<safetensors::TensorRef>& tensors,
                        int64_t step, const std::map<std::string, std::string>& metadata = {});

  // The newest checkpoint of `uid`. kNotFound when it has none; kInternal "checkpoint ... is torn
  // or corrupt" when its bytes do not match its checksum.
  Result<Checkpoint> LoadLatest(std::string_view uid) const;
  // The checkpoint of `uid` at `step`; kNotFound when that version is not kept.
  Result<Checkpoint> Load(std::string_view uid, int64_t step) const;

  // The kept steps of `uid`, ascending (empty when it has none). Reads only the step list, so it
  // answers even when a checkpoint's bytes are corrupt: a reader can then try older versions.
  Result<std::vector<int64_t>> Steps(std::string_view uid) const;

  // Every expert with at least one checkpoint, sorted by uid (bytewise).
  Result<std::vector<ExpertSummary>> ListExperts() const;

  // Deletes every checkpoint of `uid` in one synced write. kNotFound when it has none.
  Status DeleteExpert(std::string_view uid);

  // Writes the latest checkpoint of `uid` to `path` as a .safetensors file: its tensors under their
  // names, and as __metadata__ the checkpoint's metadata plus "uid" and "step". The file appears
  // atomically (temporary file, fsync, rename) and replaces an existing one.
  Status Export(std::string_view uid, const std::string& path) const;

  const std::shared_ptr<Database>& database() const { return db_; }

 private:
  ExpertStore(std::shared_ptr<Database> db, const ExpertStoreOptions& options);
  Result<Checkpoint> LoadVersion(const Database::Snapshot& snapshot, std::string_view uid,
                                 int64_t step) const;

  std::shared_ptr<Database> db_;
  const ExpertStoreOptions options_;
  const Clock& clock_;
  // Serializes the read-modify-write of an expert's step list in SaveCheckpoint and DeleteExpert.
  std::mutex write_mu_;
};

// Writes `checkpoint` as a .safetensors file at `path`, atomically, as ExpertStore::Export does.
// Useful for exporting a checkpoint other than the latest.
Status ExportCheckpoint(const Checkpoint& checkpoint, const std::string& path);

// The parameters of a checkpoint under their module names: the "param/" tensors with the prefix
// cut, and no optimizer state. This is what `dmoe export` writes.
Checkpoint WeightsOnly(const Checkpoint& checkpoint);

}  // namespace dmoe::storage

#endif  // DMOE_STORAGE_EXPERT_STORE_H_
