// The subcommands of the `dmoe` client. Each Add*Command registers one subcommand on the app; when
// CLI11 selects it, its callback runs it and stores the process exit status in *exit_code.
// Exit statuses: 0 success, kExitError (2) for any error, which is printed to stderr as
// "error: <what>". A command never lets an exception escape.
#ifndef DMOE_CLI_COMMANDS_H_
#define DMOE_CLI_COMMANDS_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "core/status.h"

namespace CLI {
class App;
}  // namespace CLI

namespace dmoe {
class Clock;
}  // namespace dmoe

namespace dmoe::cli {

constexpr int kExitOk = 0;
constexpr int kExitError = 2;

// Prints "error: <message>" to `err` and returns kExitError.
inline int PrintError(std::ostream& err, const Status& s) {
  err << "error: " << s.message() << "\n";
  return kExitError;
}

// `dmoe inspect FILE`: decodes a safetensors file and prints
// {"tensors": {NAME: {"dtype": .., "shape": [..]}, ..}, "metadata": {..}} (tensors in data order).
void AddInspectCommand(CLI::App& app, int* exit_code);
// `dmoe dht put --dht HOST:PORT --identity FILE KEY SUBKEY VALUE [--ttl SECONDS]` (exit 0 stored,
// 2 error) and `dmoe dht get --dht HOST:PORT KEY`, which prints
// {"key":..,"entries":{SUBKEY:{"value":..,"expires_at_ms":..,"publisher":HEX}}} (exit 0 found,
// 1 not found, 2 error). Both join the DHT as a short-lived client node reading `clock`, which
// must outlive the app.
void AddDhtCommand(CLI::App& app, const Clock& clock, int* exit_code);
// The body of `dmoe inspect`, with its streams injected for tests.
int RunInspect(const std::string& path, std::ostream& out, std::ostream& err);

// `dmoe export --db DIR --uid UID --out FILE`: the expert's newest weights (no optimizer state)
// as a .safetensors file under the module's parameter names. The store it opens reads `clock`,
// which must outlive the app.
void AddExportCommand(CLI::App& app, const Clock& clock, int* exit_code);
int RunExport(const std::string& db, const std::string& uid, const std::string& out_path,
              const Clock& clock, std::ostream& out, std::ostream& err);

// `dmoe keygen --out FILE [--force]` creates an identity; `dmoe pubkey --identity FILE` prints its
// public key.
void AddKeygenCommand(CLI::App& app, int* exit_code);

// `dmoe infer --router URL --model NAME (--inputs FILE.json | --fashion-mnist-test N)`.
void AddInferCommand(CLI::App& app, int* exit_code);
int RunInfer(const std::string& router, const std::string& model, const std::string& inputs_path,
             int64_t fashion_mnist_count, std::ostream& out, std::ostream& err);

// `dmoe generate --router URL --model NAME [knobs] PROMPT`: streams a continuation to `out` as it
// is decoded and a summary line with tokens/s to `err`; exit 2 when the router refuses or the
// swarm fails mid-generation (the text so far is printed).
struct GenerateFlags {
  std::string prompt;
  int64_t max_tokens = 64;
  double temperature = 0.8;
  int64_t top_k = 0;
  double top_p = 1.0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
};
void AddGenerateCommand(CLI::App& app, int* exit_code);
int RunGenerate(const std::string& router, const std::string& model, const GenerateFlags& flags,
                std::ostream& out, std::ostream& err);

// `dmoe experts --router URL`: the router's view of the swarm, one line per expert.
void AddExpertsCommand(CLI::App& app, int* exit_code);
int RunExperts(const std::string& router, std::ostream& out, std::ostream& err);

}  // namespace dmoe::cli

#endif  // DMOE_CLI_COMMANDS_H_
