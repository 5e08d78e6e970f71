// The server's experts as its torch-free parts (server.cc) see them: created, each restored from
// its newest checkpoint, into a compute runtime; and checkpointed from that runtime. The tensors
// stay behind these two calls (implemented in hosting.cc), so the server's lifecycle code compiles
// without libtorch.
#ifndef DMOE_EXPERT_SERVER_HOSTING_H_
#define DMOE_EXPERT_SERVER_HOSTING_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "expert_server/options.h"
#include "expert_server/runtime.h"
#include "storage/expert_store.h"

namespace dmoe::expert_server {

// Creates the experts `uids` of `config` (types from ExpertRegistry::WithBuiltins()) and a runtime
// for them, not yet started. With a `store`, each expert resumes from its newest intact checkpoint
// (RestoreLatest, logged); one without a checkpoint starts fresh. kInvalidArgument for a bad
// config or optimizer; a restore error other than kNotFound is returned naming the uid. Blocks on
// disk; call before the server serves.
Result<std::unique_ptr<Runtime>> CreateRuntime(const std::vector<std::string>& uids,
                                               const ExpertConfig& config,
                                               const OptimizerOptions& optimizer,
                                               const storage::ExpertStore* store,
                                               RuntimeOptions options);

// Snapshots every expert of `runtime` (on a runtime thread, between batches) and writes each
// snapshot as one checkpoint. Returns each uid with the outcome of its write: one expert that
// cannot be saved (a disk error, or state that is not finite and so is never written) does not keep
// the others from theirs. Blocks until written; must not be called from a runtime thread.
std::vector<std::pair<std::string, Status>> CheckpointExperts(Runtime& runtime,
                                                              storage::ExpertStore& store);

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_HOSTING_H_
