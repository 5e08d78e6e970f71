// dmoe-train: trains a model spec on Fashion-MNIST or on text through the swarm and publishes it to
// the router (DESIGN.md; PROTOCOL.md 5). Progress lines go to stdout, logs to stderr.
// SIGINT/SIGTERM checkpoint and exit 0; the same command resumes.
//
// The process's one wiring place: Train below builds the clock, the DHT node (its own io thread),
// the swarm (its callers' io threads) and the identity once, after the trainer's inputs were read,
// and passes them to RunTrainer; libtorch's compute threads are set in main. Nothing in the
// trainer creates or looks up a process-wide instance.
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/logging.h"
#include "core/openmp_env.h"
#include "core/request_auth.h"
#include "core/signals.h"
#include "data/data_source.h"
#include "dht/dht.h"
#include "gating/swarm.h"
#include "gating/trainer.h"
#include "net/buffer_pool.h"
#include "tensor/safetensors.h"

namespace dmoe::gating {
namespace {

// The flags that wire the process rather than configure the training.
struct WiringFlags {
  std::vector<std::string> dht_bootstrap;
  std::string dht_network = "dmoe";
  std::string identity_path;  // signs expert backward and model publication; empty = unsigned
  // --server-keys: when set, only experts announced by the keys in this file are used.
  std::string server_keys_path;
};

// Adds a flag that takes one of `names` (in help order) and stores the enum it names. The value is
// checked and converted here, once; nothing downstream sees the string.
template <typename Enum>
CLI::Option* AddEnumOption(CLI::App& app, const std::string& flag, Enum& value,
                           const std::vector<std::pair<std::string, Enum>>& names,
                           const std::string& help) {
  std::vector<std::string> allowed;
  std::string default_name;
  for (const auto& [name, e] : names) {
    allowed.push_back(name);
    if (e == value) default_name = name;
  }
  return app
      .add_option_function<std::string>(
          flag,
          [&value, names](const std::string& given) {
            for (const auto& [name, e] : names) {
              if (name == given) value = e;
            }
          },
          help)
      ->check(CLI::IsMember(allowed))
      ->default_str(default_name);
}

// Reads the trainer's inputs, wires the process and trains.
Result<TrainerResult> Train(const TrainerOptions& o, const WiringFlags& flags,
                            const std::atomic<bool>& stop) {
  // Before the DHT: a bad flag or file fails at once, not after a bootstrap timeout.
  const Clock& clock = RealClock::Instance();
  DMOE_ASSIGN_OR_RETURN(TrainerInputs inputs, PrepareTrainer(o, clock));

  net::BufferPool buffer_pool;  // outlives the swarm, whose expert calls take their buffers from it
  std::unique_ptr<dht::Dht> dht;  // outlives the swarm, which holds it
  TrainerWiring wiring;
  wiring.clock = &clock;
  if (!flags.identity_path.empty()) {
    DMOE_ASSIGN_OR_RETURN(wiring.identity, LoadOrCreateIdentity(flags.identity_path));
  }
  SwarmOptions swarm_options;
  if (!flags.server_keys_path.empty()) {
    DMOE_ASSIGN_OR_RETURN(swarm_options.server_keys,
                          RequestVerifier::LoadKeyFile(flags.server_keys_path));
  }
  swarm_options.caller.identity = wiring.identity;
  swarm_options.caller.buffer_pool = &buffer_pool;
  dht::DhtOptions dht_options;
  dht_options.clock = &clock;
  dht_options.bootstrap = flags.dht_bootstrap;
  dht_options.node.client = true;
  dht_options.node.network = flags.dht_network;
  DMOE_ASSIGN_OR_RETURN(dht, dht::Dht::Start(std::move(dht_options)));
  DMOE_RETURN_IF_ERROR(dht->WaitBootstrapped(std::chrono::seconds(10)));
  wiring.swarm = std::make_shared<Swarm>(dht.get(), clock, swarm_options);

  Result<TrainerResult> result = RunTrainer(o, inputs, wiring, std::cout, &stop);
  wiring.swarm.reset();
  dht->Stop();
  return result;
}

}  // namespace
}  // namespace dmoe::gating

int main(int argc, char** argv) {
  dmoe::UsePassiveOpenMpWaitPolicy(argv);
  // Before any thread starts (libtorch's start with at::set_num_threads): threads inherit the mask,
  // so SIGINT/SIGTERM reach only the watcher below and never kill the process mid-step.
  dmoe::BlockTerminationSignals();
  CLI::App app{"dmoe-train: train a dmoe model through the swarm"};
  dmoe::gating::TrainerOptions o;
  dmoe::gating::WiringFlags wiring;
  std::string log_level = "info";
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", o.spec_path, "model spec JSON file (PROTOCOL section 5)")->required();
  app.add_option("--dht", wiring.dht_bootstrap, "HOST:PORT of a DHT node; repeatable")
      ->take_all()
      ->required();
  app.add_option("--network", wiring.dht_network, "DHT network name")->capture_default_str();
  app.add_option("--router", o.router_url,
                 "router URL to publish the model to, e.g. http://127.0.0.1:8000");
  app.add_option("--identity", wiring.identity_path,
                 "identity file: signs backward and publication");
  app.add_option("--server-keys", wiring.server_keys_path,
                 "file of hex public keys, one a line: use only experts these keys announce");
  app.add_option("--db", o.db_dir, "RocksDB directory for the trainer's own checkpoint (resume)");
  app.add_option_function<std::string>(
         "--data",
         [&o](const std::string& value) {
           // Checked by the validator below first: the parse cannot fail here.
           o.data = *dmoe::data::ParseDataSpec(value);
         },
         "training data: fashion-mnist, kjv (Debian's bible-kjv) or text:FILE (any text; the "
         "last 5% is held out)")
      ->check(
          [](const std::string& value) {
            dmoe::Result<dmoe::data::DataSpec> spec = dmoe::data::ParseDataSpec(value);
            return spec.ok() ? std::string() : spec.status().message();
          },
          "fashion-mnist|kjv|text:FILE")
      ->default_str("fashion-mnist");
  app.add_option("--data-dir", o.data_dir,
                 "directory of the Fashion-MNIST IDX files (default: Debian's package)");
  app.add_option("--seq-len", o.seq_len,
                 "text: tokens (bytes) per training window, at most the spec's max_len")
      ->capture_default_str();
  app.add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "samples per step")->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate of the local layers")->capture_default_str();
  dmoe::gating::AddEnumOption(app, "--lr-schedule", o.lr_schedule,
                              {{"constant", dmoe::gating::LrSchedule::kConstant},
                               {"cosine", dmoe::gating::LrSchedule::kCosine}},
                              "constant, or cosine: from --lr down to 0 at --steps (local layers)");
  app.add_option("--seed", o.seed, "seed of initialization and data order")->capture_default_str();
  app.add_option("--eval-every", o.eval_every,
                 "steps between test evaluations; 0 = only at the end")
      ->capture_default_str();
  app.add_option("--eval-samples", o.eval_samples, "Fashion-MNIST: test images per evaluation")
      ->capture_default_str();
  app.add_option("--eval-bytes", o.eval_bytes,
                 "text: held-out bytes scored per evaluation; 0 = all of them")
      ->capture_default_str();
  app.add_option("--max-seconds", o.max_seconds,
                 "stop (evaluate, publish, checkpoint) after this long; 0 = no limit")
      ->capture_default_str();
  app.add_option("--publish-every", o.publish_every,
                 "steps between publications; 0 = only at the end")
      ->capture_default_str();
  app.add_option("--log-every", o.log_every, "steps between progress lines")->capture_default_str();
  dmoe::gating::AddEnumOption(app, "--wire-dtype", o.wire_dtype,
                              {{"F32", dmoe::safetensors::DType::kF32},
                               {"F16", dmoe::safetensors::DType::kF16},
                               {"BF16", dmoe::safetensors::DType::kBF16}},
                              "F32, F16 or BF16 on the wire");
  app.add_option("--balance-loss-weight", o.balance_loss_weight,
                 "weight of the load-balancing loss")
      ->capture_default_str();
  app.add_option(
         "--allow-zero-outputs", o.allow_zero_outputs,
         "give zeros to a sample none of whose experts answered, instead of skipping the step")
      ->capture_default_str();
  app.add_option("--in-flight", o.in_flight,
                 "steps in flight at once (1 = synchronous); a gradient is at most N-1 updates "
                 "stale")
      ->check(CLI::Range(1, dmoe::gating::kMaxInFlight))
      ->capture_default_str();
  app.add_option("--weight-prediction", o.weight_prediction,
                 "with --in-flight > 1, compute each step at the parameters Adam is predicted to "
                 "reach by the time it is applied")
      ->capture_default_str();
  app.add_option("--threads", threads, "compute (intra-op) threads")->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (dmoe::Status s = dmoe::SetUpLogging("dmoe-train", log_level); !s.ok()) {
    std::cerr << "dmoe-train: " << s.ToString() << "\n";
    return 2;
  }
  at::set_num_threads(threads);
  std::atomic<bool> stop{false};
  dmoe::SignalWatcher watcher([&stop](int sig) {
    spdlog::info("signal {}: checkpointing and stopping after this step", sig);
    stop = true;
  });
  auto result = [&]() -> dmoe::Result<dmoe::gating::TrainerResult> {
    try {
      return dmoe::gating::Train(o, wiring, stop);
    } catch (const std::exception& e) {
      // The process edge: an exception the trainer does not expect (a bug in it or in
      // libtorch) becomes a Status, and the exit code every other error has.
      return dmoe::InternalError(std::string("unexpected exception: ") + e.what());
    }
  }();
  watcher.Stop();  // training ended by itself or by the signal: no signal is sent to wake it
  if (!result.ok()) {
    std::cerr << "dmoe-train: " << result.status().ToString() << "\n";
    return 2;
  }
  std::cout << "done: steps " << result->steps_done;
  if (dmoe::data::IsTextSource(o.data.source)) {
    std::cout << " bpb " << result->final_bpb;
  } else {
    std::cout << " test_accuracy " << result->final_test_accuracy;
  }
  std::cout << " model_version " << result->published_version << "\n";
  return 0;
}
