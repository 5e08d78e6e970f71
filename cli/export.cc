// `dmoe export --db DIR --uid UID --out FILE.safetensors`: an expert's newest weights as a plain
// safetensors file, under the module's parameter names, without optimizer state.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "storage/expert_store.h"

namespace dmoe::cli {

int RunExport(const std::string& db, const std::string& uid, const std::string& out_path,
              const Clock& clock, std::ostream& out, std::ostream& err) {
  storage::ExpertStoreOptions options;
  options.create_if_missing = false;
  options.clock = &clock;
  Result<std::unique_ptr<storage::ExpertStore>> store = storage::ExpertStore::Open(db, options);
  if (!store.ok()) {
    err << "error: " << store.status().message() << "\n";
    return kExitError;
  }
  Result<storage::Checkpoint> cp = (*store)->LoadLatest(uid);
  if (!cp.ok()) {
    err << "error: " << cp.status().message() << "\n";
    return kExitError;
  }
  storage::Checkpoint weights = storage::WeightsOnly(*cp);
  Status s = storage::ExportCheckpoint(weights, out_path);
  if (!s.ok()) {
    err << "error: " << s.message() << "\n";
    return kExitError;
  }
  out << "exported " << uid << " step " << cp->step << " (" << weights.tensors.size()
      << " tensors) to " << out_path << "\n";
  return kExitOk;
}

void AddExportCommand(CLI::App& app, const Clock& clock, int* exit_code) {
  auto* cmd = app.add_subcommand("export", "Write an expert's newest weights as .safetensors");
  auto db = std::make_shared<std::string>();
  auto uid = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("--db", *db, "Database directory of the expert server (its --db)")->required();
  cmd->add_option("--uid", *uid, "Expert uid, e.g. ffn.0.3")->required();
  cmd->add_option("--out", *out, "Output .safetensors file")->required();
  cmd->callback(
      [=, &clock] { *exit_code = RunExport(*db, *uid, *out, clock, std::cout, std::cerr); });
}

}  // namespace dmoe::cli
