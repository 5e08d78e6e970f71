// dmoe: the command-line client (DESIGN.md). Flag parsing and dispatch only; each subcommand is in
// its own file behind cli/commands.h.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "core/clock.h"

int main(int argc, char** argv) {
  CLI::App app{"dmoe: command-line client for a dmoe swarm"};
  app.require_subcommand(1);
  int exit_code = dmoe::cli::kExitOk;
  // The process's one clock, lent to the commands that read time.
  const dmoe::Clock& clock = dmoe::RealClock::Instance();
  dmoe::cli::AddInspectCommand(app, &exit_code);
  dmoe::cli::AddExportCommand(app, clock, &exit_code);
  dmoe::cli::AddKeygenCommand(app, &exit_code);
  dmoe::cli::AddInferCommand(app, &exit_code);
  dmoe::cli::AddGenerateCommand(app, &exit_code);
  dmoe::cli::AddExpertsCommand(app, &exit_code);
  dmoe::cli::AddDhtCommand(app, clock, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a ParseError whose exit code is 0; usage errors all map to kExitError.
    return app.exit(e) == 0 ? dmoe::cli::kExitOk : dmoe::cli::kExitError;
  }
  return exit_code;
}
