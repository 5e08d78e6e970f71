// dmoe-server: hosts experts for a dmoe swarm until SIGINT or SIGTERM (DESIGN.md, PROTOCOL.md 4).
// Prints "listening on http://HOST:PORT" (the address it is bound to) on stdout once it serves,
// then "announcing as http://HOST:PORT" when the DHT gets another one (--public-endpoint,
// --public-host); logs go to stderr.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <random>
#include <thread>

#include "core/clock.h"
#include "core/host_port.h"
#include "core/identity.h"
#include "core/logging.h"
#include "core/openmp_env.h"
#include "core/signals.h"
#include "core/uid.h"
#include "dht/dht.h"
#include "expert_server/process_memory.h"
#include "expert_server/server.h"
#include "net/buffer_pool.h"
#include "net/io_context.h"
#include "net/server_flags.h"
#include "storage/expert_store.h"
#include "storage/kv_store.h"

namespace {

using dmoe::Result;
using dmoe::Status;

// The flags Serve wires the process from, as opposed to the server's own options.
struct WiringFlags {
  // --identity: the identity file (created when missing); empty = a fresh identity for this run.
  std::string identity_path;
  // --db: the RocksDB directory of the expert store and the DHT node's state; empty = none.
  std::string db_dir;
  int keep_checkpoints = 3;
  // --dht: bootstrap addresses; empty = no DHT node, nothing announced.
  std::vector<std::string> dht_bootstrap;
  std::string dht_listen = "0.0.0.0:0";
  // --dht-public-endpoint (DhtOptions::public_address); empty = the bound address.
  std::string dht_public_endpoint;
  std::string dht_network = "dmoe";
  // --num-experts: host only this many of the expanded uids (0 = all of them).
  size_t num_experts = 0;
  int compute_threads = 1;
};

// Expands --experts: a grid pattern ("ffn.[0:4].[0:4]") or a comma-separated list of uids.
Result<std::vector<std::string>> ExpandExperts(const std::string& spec) {
  std::vector<std::string> uids;
  if (spec.find('[') != std::string::npos) {
    DMOE_ASSIGN_OR_RETURN(dmoe::GridPattern pattern, dmoe::ParseGridPattern(spec, 1 << 16));
    for (const dmoe::ExpertUid& uid : pattern.Expand()) uids.push_back(uid.ToString());
    return uids;
  }
  size_t start = 0;
  while (start <= spec.size()) {
    size_t comma = spec.find(',', start);
    std::string part =
        spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) {
      DMOE_RETURN_IF_ERROR(dmoe::ParseExpertUid(part));
      uids.push_back(part);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (uids.empty()) return dmoe::InvalidArgumentError("--experts names no expert");
  return uids;
}

// --num-experts: N uids of the pattern that nobody announces yet, chosen at random. Looks them up
// through a short-lived client node of its own, before the server's identity, database and node
// are opened, so that a refusal here leaves nothing behind.
Result<std::vector<std::string>> PickFree(std::vector<std::string> candidates, size_t n,
                                          const WiringFlags& flags, const dmoe::Clock& clock) {
  std::vector<std::string> free = candidates;
  if (!flags.dht_bootstrap.empty()) {
    dmoe::dht::DhtOptions options;
    options.clock = &clock;
    options.listen = "0.0.0.0:0";
    options.bootstrap = flags.dht_bootstrap;
    options.node.client = true;
    options.node.network = flags.dht_network;
    DMOE_ASSIGN_OR_RETURN(auto dht, dmoe::dht::Dht::Start(std::move(options)));
    DMOE_RETURN_IF_ERROR(dht->WaitBootstrapped(std::chrono::seconds(5)));
    std::vector<std::string> keys;
    for (const auto& uid : candidates) keys.push_back("expert/" + uid);
    std::vector<dmoe::dht::KeyResult> found = dht->GetManyBlocking(keys, std::chrono::seconds(5));
    dht->Stop();
    free.clear();
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (found[i].records.empty()) free.push_back(candidates[i]);
    }
  }
  if (free.size() < n) {
    return dmoe::UnavailableError("only " + std::to_string(free.size()) +
                                  " uids of the pattern are free, " + std::to_string(n) +
                                  " wanted");
  }
  std::shuffle(free.begin(), free.end(), std::mt19937_64(std::random_device{}()));
  free.resize(n);
  std::sort(free.begin(), free.end());
  return free;
}

// Exit code 2 with the reason on stderr: what every refusal to start answers.
int Fail(const Status& s) {
  std::cerr << "dmoe-server: " << s.ToString() << "\n";
  return 2;
}

// --identity's file, or a fresh identity for this run.
Result<dmoe::Identity> ServerIdentity(const WiringFlags& flags) {
  if (flags.identity_path.empty()) return dmoe::Identity::Generate();
  return dmoe::LoadOrCreateIdentity(flags.identity_path);
}

// The expert store in --db (nullptr without --db), stamping checkpoints with `clock`.
Result<std::unique_ptr<dmoe::storage::ExpertStore>> OpenStore(const WiringFlags& flags,
                                                              const dmoe::Clock& clock) {
  if (flags.db_dir.empty()) return std::unique_ptr<dmoe::storage::ExpertStore>();
  return dmoe::storage::ExpertStore::Open(
      flags.db_dir, {.keep_checkpoints = flags.keep_checkpoints, .clock = &clock});
}

// The server's DHT node (nullptr without --dht): it signs the announcements with the server's
// identity and keeps its contacts and records in the store's database, beside the checkpoints.
// Returns once it is bound; the server waits for the join before it first announces.
Result<std::unique_ptr<dmoe::dht::Dht>> StartDht(const WiringFlags& flags,
                                                 const dmoe::Identity& identity,
                                                 dmoe::storage::ExpertStore* store,
                                                 const dmoe::Clock& clock) {
  if (flags.dht_bootstrap.empty()) return std::unique_ptr<dmoe::dht::Dht>();
  dmoe::dht::DhtOptions options;
  options.clock = &clock;
  options.listen = flags.dht_listen;
  options.public_address = flags.dht_public_endpoint;
  options.bootstrap = flags.dht_bootstrap;
  options.identity = identity;
  options.node.network = flags.dht_network;
  if (store != nullptr)
    options.kv_store = std::make_shared<dmoe::storage::KvStore>(store->database());
  return dmoe::dht::Dht::Start(std::move(options));
}

// The process's wiring: its one clock, buffer pool, network io_context, identity, expert store and
// DHT node, made here and lent to the server, which runs until SIGINT or SIGTERM. They are stopped
// and closed after the server, in the reverse order.
int Serve(dmoe::expert_server::ExpertServerOptions options, const WiringFlags& flags) {
  const dmoe::RealClock clock;
  if (flags.num_experts > 0) {
    auto picked = PickFree(options.uids, flags.num_experts, flags, clock);
    if (!picked.ok()) return Fail(picked.status());
    options.uids = *picked;
  }
  // Refused before the identity, the database or the node is opened: an operator's mistake leaves
  // no file behind.
  if (Status s = dmoe::expert_server::ExpertServer::CheckOptions(options); !s.ok()) return Fail(s);
  dmoe::net::BufferPool buffer_pool;
  dmoe::net::IoContext io(std::max(1, options.net_threads));
  dmoe::expert_server::SetComputeThreads(flags.compute_threads);
  Result<dmoe::Identity> identity = ServerIdentity(flags);
  if (!identity.ok()) return Fail(identity.status());
  auto store = OpenStore(flags, clock);
  if (!store.ok()) return Fail(store.status());
  auto dht = StartDht(flags, *identity, store->get(), clock);
  if (!dht.ok()) return Fail(dht.status());
  // Stops the node before the store closes: its state is saved into the store's database.
  auto stop_wiring = [&dht, &store] {
    if (*dht) (*dht)->Stop();
    dht->reset();
    if (*store) {
      Status s = (*store)->Close();
      if (!s.ok()) spdlog::error("closing the database: {}", s.ToString());
    }
  };
  options.clock = &clock;
  options.buffer_pool = &buffer_pool;
  options.io = &io;
  options.identity = std::move(identity).value();
  options.store = store->get();
  options.dht = dht->get();

  auto server = dmoe::expert_server::ExpertServer::Start(std::move(options));
  if (!server.ok()) {
    stop_wiring();
    return Fail(server.status());
  }
  const std::string listening = (*server)->listen_endpoint();
  const std::string announced = (*server)->endpoint();
  std::printf("listening on %s\n", listening.c_str());
  if (announced != listening) std::printf("announcing as %s\n", announced.c_str());
  std::fflush(stdout);
  spdlog::info("listening on {} ({} compute threads), announcing {}", listening,
               flags.compute_threads, announced);

  int sig = dmoe::WaitForTerminationSignal();
  spdlog::info("signal {}: finishing requests, writing a final checkpoint, stopping", sig);
  (*server)->Stop();
  stop_wiring();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dmoe::UsePassiveOpenMpWaitPolicy(argv);
  // Before any thread starts (libtorch's start with at::set_num_threads): threads inherit the mask.
  dmoe::BlockTerminationSignals();
  // Before any thread or tensor: glibc's thresholds and the tensor allocator (see the header).
  dmoe::expert_server::ConfigureProcessMemory();
  CLI::App app{"dmoe-server: host experts for a dmoe swarm"};
  dmoe::expert_server::ExpertServerOptions o;
  WiringFlags w;
  w.compute_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string experts, listen = "127.0.0.1:0", log_level = "info";
  double batch_timeout_ms = 1;
  std::string dht;
  app.add_option(
         "--experts", experts,
         "experts to host: a grid pattern such as 'ffn.[0:4].[0:4]' or uids 'ffn.0.1,ffn.0.2'")
      ->required();
  app.add_option("--num-experts", w.num_experts,
                 "host only N uids of the pattern, chosen at random among those nobody announces");
  app.add_option("--expert-type", o.expert.type, "ffn, transformer, or a registered type")
      ->capture_default_str();
  app.add_option("--hidden-dim", o.expert.hidden_dim, "width d of the experts' input and output")
      ->capture_default_str();
  app.add_option("--num-heads", o.expert.num_heads,
                 "attention heads (transformer); 0 = hidden_dim/64")
      ->capture_default_str();
  app.add_option("--seed", o.expert.seed, "initialization seed (each uid derives its own)")
      ->capture_default_str();
  app.add_option("--listen", listen, "HTTP HOST:PORT to serve; port 0 picks a free one")
      ->capture_default_str();
  app.add_option("--public-host", o.public_host,
                 "host announced in the DHT, with the listen port (default: the listen host)");
  app.add_option("--public-endpoint", o.public_endpoint,
                 "HOST:PORT announced in the DHT when clients reach the server at another address "
                 "than --listen (a port forward or relay in front of it); excludes --public-host");
  app.add_option("--dht", w.dht_bootstrap, "HOST:PORT of a DHT node to join; repeatable")
      ->take_all();
  app.add_option("--dht-listen", w.dht_listen, "UDP HOST:PORT of this server's own DHT node")
      ->capture_default_str();
  app.add_option("--dht-public-endpoint", w.dht_public_endpoint,
                 "UDP HOST:PORT other DHT nodes reach this server's DHT node at, when not "
                 "--dht-listen's (a port forward or relay); they verify it with a ping before use");
  app.add_option("--network", w.dht_network, "DHT network name")->capture_default_str();
  app.add_option("--announce-every", o.announce_every_s, "seconds between announcements")
      ->capture_default_str();
  app.add_option("--announce-ttl", o.announce_ttl_s, "seconds an announcement lives")
      ->capture_default_str();
  app.add_option("--db", w.db_dir, "RocksDB directory for checkpoints; none = no persistence");
  app.add_option("--checkpoint-every", o.checkpoint_every_s, "seconds between checkpoints")
      ->capture_default_str();
  app.add_option("--keep-checkpoints", w.keep_checkpoints, "checkpoint versions kept per expert")
      ->capture_default_str();
  app.add_option("--identity", w.identity_path,
                 "identity file (created when missing); none = a fresh key per run");
  app.add_option("--trainer-keys", o.trainer_keys_path,
                 "file of hex public keys allowed to send backward");
  app.add_flag("--open-training", o.open_training,
               "allow anyone to train when bound to, or announcing, a public address");
  // Checked against its names here (numbers are refused) and turned into the enum once, below.
  std::string optimizer = "adam";
  app.add_option("--optimizer", optimizer, "adam or sgd")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  app.add_option("--lr", o.optimizer.lr, "learning rate")->capture_default_str();
  app.add_option("--weight-decay", o.optimizer.weight_decay, "decoupled weight decay")
      ->capture_default_str();
  app.add_option("--clip-grad-norm,--grad-clip-norm", o.optimizer.clip_grad_norm,
                 "scale each update's gradient down to this global L2 norm (bounds what one "
                 "trainer's gradient can do); 0 = off")
      ->capture_default_str();
  app.add_option("--warmup-steps", o.optimizer.warmup_steps, "linear learning-rate warmup steps")
      ->capture_default_str();
  app.add_option("--lr-decay-steps", o.optimizer.decay_steps,
                 "after warmup, cosine decay of the learning rate to 0 over this many steps of "
                 "each expert; 0 = constant")
      ->capture_default_str();
  app.add_option("--max-batch-size", o.runtime.max_batch_size,
                 "samples merged into one batch at most")
      ->capture_default_str();
  app.add_option("--batch-timeout-ms", batch_timeout_ms,
                 "how long a partial batch waits for more requests: after its oldest one arrived, "
                 "or, if that one waited through the last batch, after that batch was answered")
      ->capture_default_str();
  app.add_option("--max-queue", o.runtime.max_queue,
                 "samples queued per expert before resource_exhausted")
      ->capture_default_str();
  app.add_option("--max-staleness", o.runtime.max_staleness,
                 "refuse gradients this many steps old; -1 = off")
      ->capture_default_str();
  dmoe::net::AddServerLimitFlags(app, {.max_body_bytes = &o.max_body_bytes,
                                       .max_held_request_bytes = &o.max_held_request_bytes,
                                       .max_connections = &o.max_connections,
                                       .max_connections_per_ip = &o.max_connections_per_ip});
  app.add_option("--ws-max-in-flight", o.ws_max_in_flight, "requests in flight per WebSocket")
      ->capture_default_str();
  app.add_option("--max-seq-len", o.expert.max_seq_len,
                 "longest sequence a transformer expert takes; longer is invalid_argument")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", w.compute_threads, "compute (intra-op) threads")
      ->capture_default_str();
  app.add_option("--net-threads", o.net_threads, "network threads")->capture_default_str();
  app.add_option("--fail-rate", o.fail_rate,
                 "fault injection: fraction of requests answered unavailable")
      ->capture_default_str();
  app.add_option("--nan-rate", o.nan_rate,
                 "fault injection: fraction of forward answers whose outputs are NaN")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (Status s = dmoe::SetUpLogging("dmoe-server", log_level); !s.ok()) return Fail(s);
  // Each address flag is checked here, so that its error names the flag.
  auto parse = [](const char* flag, const std::string& text,
                  dmoe::PortRule rule) -> Result<dmoe::HostPort> {
    Result<dmoe::HostPort> parsed = dmoe::ParseHostPort(text, rule);
    if (!parsed.ok()) return dmoe::InvalidArgumentError(flag + (": " + parsed.status().message()));
    return parsed;
  };
  auto host_port = parse("--listen", listen, dmoe::PortRule::kAnyPort);
  if (!host_port.ok()) return Fail(host_port.status());
  o.listen_host = host_port->host;
  o.listen_port = host_port->port;
  if (!o.public_endpoint.empty() && !o.public_host.empty()) {
    return Fail(dmoe::InvalidArgumentError(
        "--public-endpoint and --public-host are both given: --public-endpoint HOST:PORT names the "
        "host too, give one of them"));
  }
  if (!o.public_endpoint.empty()) {
    auto parsed = parse("--public-endpoint", o.public_endpoint, dmoe::PortRule::kNonZeroPort);
    if (!parsed.ok()) return Fail(parsed.status());
  }
  if (!w.dht_public_endpoint.empty()) {
    auto parsed =
        parse("--dht-public-endpoint", w.dht_public_endpoint, dmoe::PortRule::kNonZeroPort);
    if (!parsed.ok()) return Fail(parsed.status());
  }
  o.runtime.batch_timeout_us = static_cast<int64_t>(batch_timeout_ms * 1000);
  o.optimizer.kind = optimizer == "sgd" ? dmoe::expert_server::OptimizerKind::kSgd
                                        : dmoe::expert_server::OptimizerKind::kAdam;
  auto uids = ExpandExperts(experts);
  if (!uids.ok()) return Fail(uids.status());
  o.uids = *uids;
  return Serve(std::move(o), w);
}
