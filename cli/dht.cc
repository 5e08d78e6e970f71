// `dmoe dht put` and `dmoe dht get`: a short-lived client node joins the DHT through --dht, runs
// one operation and leaves. Client nodes ask others to keep them out of routing tables.
//
// Exit statuses: put 0 stored / 2 error; get 0 found / 1 not found / 2 error.
#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/clock.h"
#include "core/hex.h"
#include "core/identity.h"
#include "dht/dht.h"

namespace dmoe::cli {
namespace {

struct DhtFlags {
  std::string dht;
  std::string network = "dmoe";
  int64_t timeout_ms = 5000;
};

void AddCommonFlags(CLI::App& cmd, DhtFlags& flags) {
  cmd.add_option("--dht", flags.dht, "HOST:PORT of a DHT node to join through")->required();
  cmd.add_option("--network", flags.network, "DHT network name")->capture_default_str();
  cmd.add_option("--timeout-ms", flags.timeout_ms, "deadline for joining and for the operation")
      ->capture_default_str();
}

Result<std::unique_ptr<dht::Dht>> Join(const DhtFlags& flags, const Clock& clock,
                                       std::optional<Identity> identity) {
  dht::DhtOptions options;
  options.clock = &clock;
  // Bind the family of the node we join through.
  options.listen = flags.dht.find('[') != std::string::npos ? "[::]:0" : "0.0.0.0:0";
  options.bootstrap = {flags.dht};
  options.identity = std::move(identity);
  options.node.network = flags.network;
  options.node.client = true;
  options.node.join_refresh = false;
  DMOE_ASSIGN_OR_RETURN(auto node, dht::Dht::Start(std::move(options)));
  DMOE_RETURN_IF_ERROR(node->WaitBootstrapped(std::chrono::milliseconds(flags.timeout_ms)));
  return node;
}

int Fail(const Status& s, std::ostream& err) {
  err << "error: " << s.ToString() << "\n";
  return kExitError;
}

int RunPut(const DhtFlags& flags, const Clock& clock, const std::string& identity_path,
           const std::string& key, const std::string& subkey, const std::string& value,
           int64_t ttl_s, std::ostream& out, std::ostream& err) {
  auto identity = LoadOrCreateIdentity(identity_path);
  if (!identity.ok()) return Fail(identity.status(), err);
  if (ttl_s <= 0 || ttl_s * 1000 > dht::kMaxTtlMs) {
    return Fail(InvalidArgumentError("--ttl must be 1..600 seconds, got " + std::to_string(ttl_s)),
                err);
  }
  auto node = Join(flags, clock, *identity);
  if (!node.ok()) return Fail(node.status(), err);
  auto stored = (*node)->PutBlocking(key, subkey, value, std::chrono::seconds(ttl_s));
  (*node)->Stop();
  if (!stored.ok()) return Fail(stored.status(), err);
  nlohmann::ordered_json j = {{"key", key},
                              {"subkey", subkey},
                              {"stored_on", *stored},
                              {"publisher", identity->public_key_hex()}};
  out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  return kExitOk;
}

int RunGet(const DhtFlags& flags, const Clock& clock, const std::string& key, std::ostream& out,
           std::ostream& err) {
  auto node = Join(flags, clock, std::nullopt);
  if (!node.ok()) return Fail(node.status(), err);
  auto results = (*node)->GetManyBlocking({key}, std::chrono::milliseconds(flags.timeout_ms));
  (*node)->Stop();
  const dht::KeyResult& r = results.front();
  if (!r.status.ok() && r.status.code() != Code::kNotFound) return Fail(r.status, err);
  nlohmann::ordered_json entries = nlohmann::ordered_json::object();
  for (const dht::Record& rec : r.records) {
    entries[rec.subkey] = {{"value", rec.value},
                           {"expires_at_ms", rec.expiration_ms},
                           {"publisher", PublicKeyToHex(rec.publisher)}};
  }
  nlohmann::ordered_json j = {{"key", key}, {"entries", entries}};
  out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  return r.records.empty() ? 1 : kExitOk;
}

}  // namespace

void AddDhtCommand(CLI::App& app, const Clock& clock, int* exit_code) {
  CLI::App* dht = app.add_subcommand("dht", "put and get DHT records");
  dht->require_subcommand(1);

  auto put_flags = std::make_shared<DhtFlags>();
  auto put_args = std::make_shared<std::vector<std::string>>();
  auto identity = std::make_shared<std::string>();
  auto ttl = std::make_shared<int64_t>(600);
  CLI::App* put = dht->add_subcommand("put", "sign and store KEY SUBKEY VALUE");
  AddCommonFlags(*put, *put_flags);
  put->add_option("--identity", *identity, "publisher identity file (created when missing)")
      ->required();
  put->add_option("--ttl", *ttl, "seconds until the record expires (at most 600)")
      ->capture_default_str();
  put->add_option("key subkey value", *put_args, "KEY SUBKEY VALUE")->expected(3)->required();
  put->callback([=, &clock] {
    *exit_code = RunPut(*put_flags, clock, *identity, (*put_args)[0], (*put_args)[1],
                        (*put_args)[2], *ttl, std::cout, std::cerr);
  });

  auto get_flags = std::make_shared<DhtFlags>();
  auto key = std::make_shared<std::string>();
  CLI::App* get = dht->add_subcommand("get", "print the records of KEY as JSON");
  AddCommonFlags(*get, *get_flags);
  get->add_option("key", *key, "KEY")->required();
  get->callback(
      [=, &clock] { *exit_code = RunGet(*get_flags, clock, *key, std::cout, std::cerr); });
}

}  // namespace dmoe::cli
