// `dmoe keygen --out FILE`: a new identity file (mode 0600); prints its public key and peer id so
// the key can be added to a server's --trainer-keys file.
#include <CLI/CLI.hpp>

#include <sys/stat.h>
#include <iostream>

#include "cli/commands.h"
#include "core/identity.h"

namespace dmoe::cli {

int RunKeygen(const std::string& path, bool force, std::ostream& out, std::ostream& err) {
  struct stat st;
  if (!force && ::stat(path.c_str(), &st) == 0) {
    err << "error: " << path << " exists; pass --force to replace it\n";
    return kExitError;
  }
  Identity id = Identity::Generate();
  Status s = id.SaveToFile(path);
  if (!s.ok()) {
    err << "error: " << s.message() << "\n";
    return kExitError;
  }
  out << "public_key=" << id.public_key_hex() << "\npeer_id=" << id.peer_id() << "\n";
  return kExitOk;
}

int RunPubkey(const std::string& path, std::ostream& out, std::ostream& err) {
  Result<Identity> id = LoadIdentity(path);
  if (!id.ok()) {
    err << "error: " << id.status().message() << "\n";
    return kExitError;
  }
  out << id->public_key_hex() << "\n";
  return kExitOk;
}

void AddKeygenCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("keygen", "Create an Ed25519 identity file");
  auto path = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  cmd->add_option("--out", *path, "Identity file to create (mode 0600)")->required();
  cmd->add_flag("--force", *force, "Replace an existing file");
  cmd->callback([=] { *exit_code = RunKeygen(*path, *force, std::cout, std::cerr); });

  auto* pub = app.add_subcommand("pubkey",
                                 "Print the public key of an identity file (one line, "
                                 "as --trainer-keys files list them)");
  auto id_path = std::make_shared<std::string>();
  pub->add_option("--identity", *id_path, "Identity file")->required();
  pub->callback([=] { *exit_code = RunPubkey(*id_path, std::cout, std::cerr); });
}

}  // namespace dmoe::cli
