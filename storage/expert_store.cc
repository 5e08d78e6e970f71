#include "storage/expert_store.h"

#include <algorithm>
#include <utility>

#include "core/uid.h"
#include "storage/atomic_file.h"
#include "storage/checkpoint_format.h"

namespace dmoe::storage {
namespace {

Status StoreClosedError() { return UnavailableError("the expert store is closed"); }

Status ValidateUid(std::string_view uid) {
  Result<ExpertUid> parsed = ParseExpertUid(uid);
  if (!parsed.ok()) return parsed.status();
  // Keys are built from the text, so two spellings of one uid must not exist.
  if (parsed->ToString() != uid) {
    return InvalidArgumentError("expert uid '" + std::string(uid) + "' is not in canonical form '" +
                                parsed->ToString() + "'");
  }
  return Status::Ok();
}

bool IsPrintableUtf8(std::string_view text) {
  for (char c : text) {
    const auto byte = static_cast<uint8_t>(c);
    if (byte < 0x20 || byte == 0x7f) return false;
  }
  return format::IsValidUtf8(text);
}

// The checks mirror the safetensors rules (PROTOCOL section 2), so that every stored checkpoint
// exports.
Status ValidateTensor(const safetensors::TensorRef& t) {
  if (t.name.empty() || t.name.size() > safetensors::kMaxNameBytes || !IsPrintableUtf8(t.name)) {
    return InvalidArgumentError("tensor name '" + t.name +
                                "' must be 1 to 256 bytes of printable UTF-8");
  }
  if (t.shape.size() > safetensors::kMaxRank) {
    return InvalidArgumentError("tensor '" + t.name + "' has rank " +
                                std::to_string(t.shape.size()) + "; at most 8 is allowed");
  }
  uint64_t bytes = safetensors::ItemSize(t.dtype);
  for (int64_t dim : t.shape) {
    if (dim < 0) {
      return InvalidArgumentError("tensor '" + t.name + "' has negative dimension " +
                                  std::to_string(dim));
    }
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
      return InvalidArgumentError("tensor '" + t.name + "' has a shape too large to address");
    }
  }
  if (bytes != t.data.size()) {
    return InvalidArgumentError("tensor '" + t.name + "' of dtype " +
                                std::string(safetensors::DTypeName(t.dtype)) +
                                " and its shape needs " + std::to_string(bytes) +
                                " bytes but has " + std::to_string(t.data.size()));
  }
  if (t.dtype == safetensors::DType::kBool &&
      std::any_of(t.data.begin(), t.data.end(), [](uint8_t b) { return b > 1; })) {
    return InvalidArgumentError("BOOL tensor '" + t.name + "' has a byte other than 0 and 1");
  }
  return Status::Ok();
}

Status ValidateSave(std::string_view uid, const std::vector<safetensors::TensorRef>& tensors,
                    int64_t step, const std::map<std::string, std::string>& metadata) {
  DMOE_RETURN_IF_ERROR(ValidateUid(uid));
  if (step < 0) {
    return InvalidArgumentError("checkpoint step " + std::to_string(step) + " is negative");
  }
  std::vector<std::string_view> names;
  for (const safetensors::TensorRef& t : tensors) {
    DMOE_RETURN_IF_ERROR(ValidateTensor(t));
    names.push_back(t.name);
  }
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) {
    return InvalidArgumentError("tensor name '" + std::string(*dup) + "' appears twice");
  }
  for (const auto& [key, value] : metadata) {
    if (key == "uid" || key == "step") {
      return InvalidArgumentError("metadata key '" + key +
                                  "' is reserved; the store records the uid and step itself");
    }
    if (!format::IsValidUtf8(key) || !format::IsValidUtf8(value)) {
      return InvalidArgumentError("metadata key and value must be UTF-8 (key '" + key + "')");
    }
  }
  return Status::Ok();
}

format::Manifest ManifestOf(std::string_view uid, int64_t step, int64_t created_unix_ms,
                            const std::map<std::string, std::string>& metadata,
                            const std::vector<safetensors::TensorRef>& tensors) {
  format::Manifest manifest{std::string(uid), step, created_unix_ms, metadata, {}};
  manifest.tensors.reserve(tensors.size());
  for (const safetensors::TensorRef& t : tensors) {
    manifest.tensors.push_back({t.name, t.dtype, t.shape, t.data.size(), Blake2b256(t.data)});
  }
  return manifest;
}

Status TornError(std::string_view uid, int64_t step, const std::string& path,
                 std::string_view why) {
  return InternalError("checkpoint of expert " + std::string(uid) + " at step " +
                       std::to_string(step) + " in database " + path +
                       " is torn or corrupt: " + std::string(why));
}

// The kept steps of `uid`; empty when it has none.
Result<std::vector<int64_t>> ReadSteps(const Database& db, std::string_view uid,
                                       const Database::Snapshot* snapshot) {
  Result<std::string> value = db.Get(ColumnFamily::kMeta, uid, snapshot);
  if (value.status().code() == Code::kNotFound) return std::vector<int64_t>();
  if (!value.ok()) return value.status();
  Result<std::vector<int64_t>> steps = format::DecodeSteps(*value);
  if (!steps.ok()) {
    return InternalError("expert " + std::string(uid) + " in database " + db.path() + ": " +
                         steps.status().message());
  }
  return steps;
}

std::string JoinSteps(const std::vector<int64_t>& steps) {
  std::string out;
  for (int64_t step : steps) out += (out.empty() ? "" : ", ") + std::to_string(step);
  return out;
}

// kInvalidArgument for options Open refuses (see ExpertStoreOptions).
Status CheckOptions(const ExpertStoreOptions& options) {
  if (options.clock == nullptr) {
    return InvalidArgumentError("ExpertStoreOptions::clock is not set: pass the process's clock");
  }
  if (options.keep_checkpoints < 1) {
    return InvalidArgumentError("keep_checkpoints is " + std::to_string(options.keep_checkpoints) +
                                "; it must be at least 1");
  }
  return Status::Ok();
}

}  // namespace

std::vector<safetensors::TensorRef> RefsOf(const std::vector<NamedTensor>& tensors) {
  std::vector<safetensors::TensorRef> refs;
  refs.reserve(tensors.size());
  for (const NamedTensor& t : tensors) refs.push_back(t.Ref());
  return refs;
}

const NamedTensor* Checkpoint::Find(std::string_view name) const {
  for (const NamedTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Hash256 CheckpointChecksum(const Checkpoint& checkpoint) {
  Hash256 checksum{};
  format::EncodeManifest(ManifestOf(checkpoint.uid, checkpoint.step, checkpoint.created_unix_ms,
                                    checkpoint.metadata, RefsOf(checkpoint.tensors)),
                         &checksum);
  return checksum;
}

ExpertStore::ExpertStore(std::shared_ptr<Database> db, const ExpertStoreOptions& options)
    : db_(std::move(db)), options_(options), clock_(*options.clock) {}

ExpertStore::~ExpertStore() = default;

Result<std::unique_ptr<ExpertStore>> ExpertStore::Open(const std::string& path,
                                                       const ExpertStoreOptions& options) {
  DMOE_RETURN_IF_ERROR(CheckOptions(options));
  DatabaseOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<Database> db, Database::Open(path, db_options));
  return Open(std::move(db), options);
}

Result<std::unique_ptr<ExpertStore>> ExpertStore::Open(std::shared_ptr<Database> db,
                                                       const ExpertStoreOptions& options) {
  if (db == nullptr) return InvalidArgumentError("ExpertStore::Open got a null database");
  DMOE_RETURN_IF_ERROR(CheckOptions(options));
  return std::unique_ptr<ExpertStore>(new ExpertStore(std::move(db), options));
}

Status ExpertStore::Close() {
  std::shared_ptr<Database> db = std::move(db_);
  // Another holder (a KvStore) keeps the database open; it closes when the last one lets go.
  if (db == nullptr || db.use_count() > 1) return Status::Ok();
  return db->Close();
}

Status ExpertStore::SaveCheckpoint(std::string_view uid,
                                   const std::vector<safetensors::TensorRef>& tensors, int64_t step,
                                   const std::map<std::string, std::string>& metadata) {
  if (db_ == nullptr) return StoreClosedError();
  DMOE_RETURN_IF_ERROR(ValidateSave(uid, tensors, step, metadata));
  // Hashing is the slow part; it needs no lock.
  const std::string manifest =
      format::EncodeManifest(ManifestOf(uid, step, clock_.NowUnixMs(), metadata, tensors));

  std::lock_guard<std::mutex> lock(write_mu_);
  DMOE_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ReadSteps(*db_, uid, nullptr));
  if (!steps.empty() && step < steps.back()) {
    return InvalidArgumentError("checkpoint step " + std::to_string(step) + " of expert " +
                                std::string(uid) + " is older than its latest checkpoint, step " +
                                std::to_string(steps.back()));
  }
  Database::WriteBatch batch(*db_);
  if (!steps.empty() && steps.back() == step) {
    // Replacing a version: its old keys go first, so no tensor of the old one outlives it. The puts
    // below come later in the batch and so are not covered by the range delete.
    auto [begin, end] = format::VersionRange(uid, step);
    DMOE_RETURN_IF_ERROR(batch.DeleteRange(ColumnFamily::kExperts, begin, end));
    steps.pop_back();
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    DMOE_RETURN_IF_ERROR(batch.Put(ColumnFamily::kExperts,
                                   format::TensorKey(uid, step, static_cast<uint32_t>(i)),
                                   tensors[i].data));
  }
  DMOE_RETURN_IF_ERROR(batch.Put(ColumnFamily::kExperts, format::ManifestKey(uid, step),
                                 std::string_view(manifest)));
  steps.push_back(step);
  while (steps.size() > static_cast<size_t>(options_.keep_checkpoints)) {
    auto [begin, end] = format::VersionRange(uid, steps.front());
    DMOE_RETURN_IF_ERROR(batch.DeleteRange(ColumnFamily::kExperts, begin, end));
    steps.erase(steps.begin());
  }
  DMOE_RETURN_IF_ERROR(
      batch.Put(ColumnFamily::kMeta, uid, std::string_view(format::EncodeSteps(steps))));
  return db_->Write(batch, /*sync=*/true);
}

Result<Checkpoint> ExpertStore::LoadLatest(std::string_view uid) const {
  if (db_ == nullptr) return StoreClosedError();
  DMOE_RETURN_IF_ERROR(ValidateUid(uid));
  std::unique_ptr<Database::Snapshot> snapshot = db_->NewSnapshot();
  DMOE_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ReadSteps(*db_, uid, snapshot.get()));
  if (steps.empty()) {
    return NotFoundError("expert " + std::string(uid) + " has no checkpoint in database " +
                         db_->path());
  }
  return LoadVersion(*snapshot, uid, steps.back());
}

Result<Checkpoint> ExpertStore::Load(std::string_view uid, int64_t step) const {
  if (db_ == nullptr) return StoreClosedError();
  DMOE_RETURN_IF_ERROR(ValidateUid(uid));
  std::unique_ptr<Database::Snapshot> snapshot = db_->NewSnapshot();
  DMOE_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ReadSteps(*db_, uid, snapshot.get()));
  if (std::find(steps.begin(), steps.end(), step) == steps.end()) {
    return NotFoundError(
        "expert " + std::string(uid) + " has no checkpoint at step " + std::to_string(step) +
        " (kept: " + (steps.empty() ? std::string("none") : JoinSteps(steps)) + ")");
  }
  return LoadVersion(*snapshot, uid, step);
}

Result<std::vector<int64_t>> ExpertStore::Steps(std::string_view uid) const {
  if (db_ == nullptr) return StoreClosedError();
  DMOE_RETURN_IF_ERROR(ValidateUid(uid));
  return ReadSteps(*db_, uid, nullptr);
}

Result<Checkpoint> ExpertStore::LoadVersion(const Database::Snapshot& snapshot,
                                            std::string_view uid, int64_t step) const {
  const std::string& path = db_->path();
  Result<std::string> manifest_bytes =
      db_->Get(ColumnFamily::kExperts, format::ManifestKey(uid, step), &snapshot);
  if (manifest_bytes.status().code() == Code::kNotFound) {
    return TornError(uid, step, path, "its manifest is missing");
  }
  if (!manifest_bytes.ok()) return manifest_bytes.status();
  Checkpoint checkpoint;
  Result<format::Manifest> manifest = format::DecodeManifest(*manifest_bytes, &checkpoint.checksum);
  if (!manifest.ok()) return TornError(uid, step, path, manifest.status().message());
  if (manifest->uid != uid || manifest->step != step) {
    return TornError(
        uid, step, path,
        "its manifest belongs to " + manifest->uid + " step " + std::to_string(manifest->step));
  }
  checkpoint.uid = std::move(manifest->uid);
  checkpoint.step = step;
  checkpoint.created_unix_ms = manifest->created_unix_ms;
  checkpoint.metadata = std::move(manifest->metadata);
  checkpoint.tensors.reserve(manifest->tensors.size());
  for (size_t i = 0; i < manifest->tensors.size(); ++i) {
    format::TensorEntry& entry = manifest->tensors[i];
    Result<std::vector<uint8_t>> data = db_->GetBytes(
        ColumnFamily::kExperts, format::TensorKey(uid, step, static_cast<uint32_t>(i)), &snapshot);
    if (data.status().code() == Code::kNotFound) {
      return TornError(uid, step, path, "the bytes of tensor '" + entry.name + "' are missing");
    }
    if (!data.ok()) return data.status();
    if (data->size() != entry.byte_size || Blake2b256(*data) != entry.digest) {
      return TornError(uid, step, path,
                       "the bytes of tensor '" + entry.name + "' do not match its checksum");
    }
    checkpoint.tensors.push_back(
        {std::move(entry.name), entry.dtype, std::move(entry.shape), std::move(*data)});
  }
  return checkpoint;
}

Result<std::vector<ExpertSummary>> ExpertStore::ListExperts() const {
  if (db_ == nullptr) return StoreClosedError();
  std::vector<ExpertSummary> experts;
  Status decode_error;
  DMOE_RETURN_IF_ERROR(
      db_->Scan(ColumnFamily::kMeta, "", [&](std::string_view uid, std::string_view value) {
        Result<std::vector<int64_t>> steps = format::DecodeSteps(value);
        if (!steps.ok()) {
          decode_error = InternalError("expert " + std::string(uid) + " in database " +
                                       db_->path() + ": " + steps.status().message());
          return false;
        }
        int64_t latest = steps->back();
        experts.push_back({std::string(uid), latest, std::move(*steps)});
        return true;
      }));
  DMOE_RETURN_IF_ERROR(decode_error);
  return experts;
}

Status ExpertStore::DeleteExpert(std::string_view uid) {
  if (db_ == nullptr) return StoreClosedError();
  DMOE_RETURN_IF_ERROR(ValidateUid(uid));
  std::lock_guard<std::mutex> lock(write_mu_);
  DMOE_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ReadSteps(*db_, uid, nullptr));
  if (steps.empty()) {
    return NotFoundError("expert " + std::string(uid) + " has no checkpoint in database " +
                         db_->path());
  }
  Database::WriteBatch batch(*db_);
  auto [begin, end] = format::ExpertRange(uid);
  DMOE_RETURN_IF_ERROR(batch.DeleteRange(ColumnFamily::kExperts, begin, end));
  DMOE_RETURN_IF_ERROR(batch.Delete(ColumnFamily::kMeta, uid));
  return db_->Write(batch, /*sync=*/true);
}

Status ExpertStore::Export(std::string_view uid, const std::string& path) const {
  DMOE_ASSIGN_OR_RETURN(Checkpoint checkpoint, LoadLatest(uid));
  return ExportCheckpoint(checkpoint, path);
}

Status ExportCheckpoint(const Checkpoint& checkpoint, const std::string& path) {
  std::map<std::string, std::string> metadata = checkpoint.metadata;
  metadata["uid"] = checkpoint.uid;
  metadata["step"] = std::to_string(checkpoint.step);
  Result<std::vector<uint8_t>> blob = safetensors::Encode(RefsOf(checkpoint.tensors), metadata);
  if (!blob.ok()) {
    return Status(blob.status().code(), "exporting checkpoint of expert " + checkpoint.uid +
                                            " at step " + std::to_string(checkpoint.step) + ": " +
                                            blob.status().message());
  }
  return WriteFileAtomically(path, *blob);
}

Checkpoint WeightsOnly(const Checkpoint& checkpoint) {
  static constexpr std::string_view kParamPrefix = "param/";
  Checkpoint out = checkpoint;
  out.tensors.clear();
  for (const NamedTensor& t : checkpoint.tensors) {
    if (t.name.rfind(kParamPrefix, 0) != 0) continue;
    NamedTensor w = t;
    w.name = t.name.substr(kParamPrefix.size());
    out.tensors.push_back(std::move(w));
  }
  return out;
}

}  // namespace dmoe::storage
