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

// Writes a snapshot as one checkpoint. Blocks on disk: call it from a storage thread.
Status SaveSnapshot(storage::ExpertStore& store, const ExpertSnapshot& snapshot);

// Loads the expert's newest checkpoint into it. kNotFound when there is none; kInvalidArgument when
// the checkpoint is of another type or width (the expert is then unchanged).
Status RestoreLatest(const storage::ExpertStore& store, Expert& expert);

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_CHECKPOINT_H_
