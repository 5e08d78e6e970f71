// Checkpoints of experts through storage: a snapshot taken on the runtime thread (a copy of the
// state tensors, cheap), written later on a storage thread, and loaded back at start.
#ifndef DMOE_EXPERT_SERVER_CHECKPOINT_H_
#define DMOE_EXPERT_SERVER_CHECKPOINT_H_

#include <map>
#include <string>

#include "core/status.h"
#include "expert_server/expert.h"
#include "storage/expert_store.h"

namespace dmoe::expert_server {

// A copy of one expert's state, detached from the live expert.
struct ExpertSnapshot {
  std::string uid;
  int64_t step = 0;
  NamedTensors state;                           // contiguous CPU copies
  std::map<std::string, std::string> metadata;  // type, hidden_dim
};

// Copies the expert's state. Must run where the expert may be touched (a runtime thread).
ExpertSnapshot TakeSnapshot(const Expert& expert);

// Writes a snapshot as one checkpoint. Blocks on disk: call it from a storage thread. A snapshot
// holding NaN or Inf is never written (kInvalidArgument naming the tensor): a checkpoint is what a
// restart resumes from, so poison in it would outlive the process.
Status SaveSnapshot(storage::ExpertStore& store, const ExpertSnapshot& snapshot);

// Loads the expert's newest intact checkpoint into it. A kept version that is corrupt (bytes that
// fail their checksum, tensors that do not decode or do not fit the expert, NaN or Inf) is skipped
// with a warning naming its step, and the next older one is tried. kNotFound when there is none;
// kInvalidArgument when the newest is of another type or width (an operator's mistake, not
// corruption: nothing older is tried); kInternal when no kept version is intact. The expert is
// unchanged unless the answer is OK.
Status RestoreLatest(const storage::ExpertStore& store, Expert& expert);

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_CHECKPOINT_H_
