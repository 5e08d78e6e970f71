#include "expert_server/hosting.h"

#include <spdlog/spdlog.h>

#include <map>

#include "expert_server/checkpoint.h"
#include "expert_server/expert.h"

namespace dmoe::expert_server {

Result<std::unique_ptr<Runtime>> CreateRuntime(const std::vector<std::string>& uids,
                                               const ExpertConfig& config,
                                               const OptimizerOptions& optimizer,
                                               const storage::ExpertStore* store,
                                               RuntimeOptions options) {
  ExpertRegistry registry = ExpertRegistry::WithBuiltins();
  std::vector<std::unique_ptr<Expert>> experts;
  for (const std::string& uid : uids) {
    DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Expert> expert,
                          Expert::Create(registry, uid, config, optimizer));
    if (store != nullptr) {
      Status restored = RestoreLatest(*store, *expert);
      if (restored.ok()) {
        spdlog::info("expert {}: restored checkpoint at step {}", uid, expert->step());
      } else if (restored.code() != Code::kNotFound) {
        return Status(restored.code(), "cannot restore " + uid + ": " + restored.message());
      }
    }
    experts.push_back(std::move(expert));
  }
  return std::make_unique<Runtime>(std::move(experts), std::move(options));
}

std::vector<std::pair<std::string, Status>> CheckpointExperts(Runtime& runtime,
                                                              storage::ExpertStore& store) {
  std::vector<ExpertSnapshot> snapshots;
  runtime
      .RunExclusive([&](std::map<std::string, Expert*>& experts) {
        for (auto& [uid, expert] : experts) snapshots.push_back(TakeSnapshot(*expert));
      })
      .IgnoreError();  // Always OK: it runs `fn` whether or not the runtime runs.
  std::vector<std::pair<std::string, Status>> outcomes;
  for (const ExpertSnapshot& s : snapshots) outcomes.emplace_back(s.uid, SaveSnapshot(store, s));
  return outcomes;
}

}  // namespace dmoe::expert_server
