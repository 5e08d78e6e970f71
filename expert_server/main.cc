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

namespace {

using dmoe::Result;
using dmoe::Status;

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

// --num-experts: N uids of the pattern that nobody announces yet, chosen at random.
Result<std::vector<std::string>> PickFree(std::vector<std::string> candidates, size_t n,
                                          const std::vector<std::string>& bootstrap,
                                          const std::string& network) {
  std::vector<std::string> free = candidates;
  if (!bootstrap.empty()) {
    dmoe::dht::DhtOptions options;
    options.clock = &dmoe::RealClock::Instance();
    options.listen = "0.0.0.0:0";
    options.bootstrap = bootstrap;
    options.node.client = true;
    options.node.network = network;
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

// The process's wiring: its one clock, buffer pool and network io_context, made here and passed
// down to the server, which runs until SIGINT or SIGTERM. (The server's DHT node is built by the
// server: it signs with the server's identity and keeps its state in the server's database.)
int Serve(dmoe::expert_server::ExpertServerOptions options, int compute_threads) {
  const dmoe::RealClock clock;
  dmoe::net::BufferPool buffer_pool;
  dmoe::net::IoContext io(std::max(1, options.net_threads));
  options.clock = &clock;
  options.buffer_pool = &buffer_pool;
  options.io = &io;
  dmoe::expert_server::SetComputeThreads(compute_threads);

  auto server = dmoe::expert_server::ExpertServer::Start(std::move(options));
  if (!server.ok()) return Fail(server.status());
  const std::string listening = (*server)->listen_endpoint();
  const std::string announced = (*server)->endpoint();
  std::printf("listening on %s\n", listening.c_str());
  if (announced != listening) std::printf("announcing as %s\n", announced.c_str());
  std::fflush(stdout);
  spdlog::info("listening on {} ({} compute threads), announcing {}", listening, compute_threads,
               announced);

  int sig = dmoe::WaitForTerminationSignal();
  spdlog::info("signal {}: finishing requests, writing a final checkpoint, stopping", sig);
  (*server)->Stop();
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
  std::string experts, listen = "127.0.0.1:0", log_level = "info";
  size_t num_experts = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  double batch_timeout_ms = 1;
  std::string dht;
  app.add_option(
         "--experts", experts,
         "experts to host: a grid pattern such as 'ffn.[0:4].[0:4]' or uids 'ffn.0.1,ffn.0.2'")
      ->required();
  app.add_option("--num-experts", num_experts,
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
  app.add_option("--dht", o.dht_bootstrap, "HOST:PORT of a DHT node to join; repeatable")
      ->take_all();
  app.add_option("--dht-listen", o.dht_listen, "UDP HOST:PORT of this server's own DHT node")
      ->capture_default_str();
  app.add_option("--dht-public-endpoint", o.dht_public_endpoint,
                 "UDP HOST:PORT other DHT nodes reach this server's DHT node at, when not "
                 "--dht-listen's (a port forward or relay); they verify it with a ping before use");
  app.add_option("--network", o.dht_network, "DHT network name")->capture_default_str();
  app.add_option("--announce-every", o.announce_every_s, "seconds between announcements")
      ->capture_default_str();
  app.add_option("--announce-ttl", o.announce_ttl_s, "seconds an announcement lives")
      ->capture_default_str();
  app.add_option("--db", o.db_dir, "RocksDB directory for checkpoints; none = no persistence");
  app.add_option("--checkpoint-every", o.checkpoint_every_s, "seconds between checkpoints")
      ->capture_default_str();
  app.add_option("--keep-checkpoints", o.keep_checkpoints, "checkpoint versions kept per expert")
      ->capture_default_str();
  app.add_option("--identity", o.identity_path,
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
  app.add_option("--threads", threads, "compute (intra-op) threads")->capture_default_str();
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
  if (!o.dht_public_endpoint.empty()) {
    auto parsed =
        parse("--dht-public-endpoint", o.dht_public_endpoint, dmoe::PortRule::kNonZeroPort);
    if (!parsed.ok()) return Fail(parsed.status());
  }
  o.runtime.batch_timeout_us = static_cast<int64_t>(batch_timeout_ms * 1000);
  o.optimizer.kind = optimizer == "sgd" ? dmoe::expert_server::OptimizerKind::kSgd
                                        : dmoe::expert_server::OptimizerKind::kAdam;
  auto uids = ExpandExperts(experts);
  if (!uids.ok()) return Fail(uids.status());
  o.uids = *uids;
  if (num_experts > 0) {
    auto picked = PickFree(*uids, num_experts, o.dht_bootstrap, o.dht_network);
    if (!picked.ok()) return Fail(picked.status());
    o.uids = *picked;
  }
  return Serve(std::move(o), threads);
}
