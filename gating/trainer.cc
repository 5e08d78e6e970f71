#include "gating/trainer.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adam.h>
#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/clock.h"
#include "core/identity.h"
#include "core/lr_schedule.h"
#include "core/request_auth.h"
#include "dht/dht.h"
#include "gating/fashion_mnist.h"
#include "gating/model.h"
#include "net/http_client.h"
#include "storage/kv_store.h"
#include "tensor/torch_tensor.h"

namespace dmoe::gating {
namespace {

constexpr char kStateFamily[] = "node_state";

Result<safetensors::DType> WireDtype(const std::string& name) {
  DMOE_ASSIGN_OR_RETURN(safetensors::DType d, safetensors::ParseDType(name));
  if (d != safetensors::DType::kF32 && d != safetensors::DType::kF16 &&
      d != safetensors::DType::kBF16) {
    return InvalidArgumentError("--wire-dtype must be F32, F16 or BF16");
  }
  return d;
}

// Accuracy on the first `limit` samples, forward only. Chunks the swarm cannot answer count as
// wrong, so a failing swarm shows as low accuracy rather than a crash.
double Evaluate(DmoeModel& model, const TensorSplit& data, int64_t limit) {
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(limit, data.x.size(0));
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += 500) {
    const int64_t len = std::min<int64_t>(500, n - start);
    try {
      at::Tensor logits = model->forward(data.x.narrow(0, start, len));
      correct += logits.argmax(1).eq(data.y.narrow(0, start, len)).sum().item<int64_t>();
    } catch (const std::exception& e) {
      spdlog::warn("evaluation chunk at {} failed: {}", start, e.what());
    }
  }
  model->train();
  return n ? static_cast<double>(correct) / static_cast<double>(n) : 0;
}

std::vector<tensor::NamedTensor> Named(const std::map<std::string, at::Tensor>& state) {
  std::vector<tensor::NamedTensor> out;
  for (const auto& [name, t] : state) out.push_back({name, t});
  return out;
}

Status Publish(const TrainerOptions& o, DmoeModel& model, const std::string& spec_json,
               const std::optional<Identity>& identity, int64_t version, int64_t step) {
  DMOE_ASSIGN_OR_RETURN(
      std::vector<uint8_t> blob,
      tensor::EncodeFromTorch(Named(model->StateDict()), {{"spec", spec_json},
                                                          {"version", std::to_string(version)},
                                                          {"step", std::to_string(step)}}));
  const std::string path = "/v1/models/" + model->spec().name;
  net::Headers headers{{"Content-Type", "application/x-safetensors"}};
  if (identity) {
    RequestSignature sig =
        SignRequest(*identity, "PUT", path, blob, RealClock::Instance().NowUnixMs());
    headers.Set(kKeyHeader, sig.key_hex);
    headers.Set(kTimestampHeader, sig.timestamp_ms);
    headers.Set(kSignatureHeader, sig.signature_hex);
  }
  DMOE_ASSIGN_OR_RETURN(net::Response r, net::Fetch("PUT", o.router_url + path, headers,
                                                    std::move(blob), std::chrono::seconds(30)));
  (void)r;
  return Status::Ok();
}

struct Checkpoint {
  int64_t step = 0;
  int64_t version = 0;
};

Status SaveCheckpoint(storage::KvStore& kv, const std::string& name, DmoeModel& model,
                      torch::optim::Adam& optimizer, const Checkpoint& c) {
  DMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> params,
                        tensor::EncodeFromTorch(Named(model->StateDict())));
  std::ostringstream optim;
  try {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(optim);
  } catch (const std::exception& e) {
    return InternalError(std::string("cannot serialize the optimizer: ") + e.what());
  }
  nlohmann::json meta = {{"step", c.step}, {"version", c.version}};
  const std::string prefix = "trainer/" + name + "/";
  return kv.ReplacePrefix(kStateFamily, prefix,
                          {{prefix + "meta", meta.dump()},
                           {prefix + "params", std::string(params.begin(), params.end())},
                           {prefix + "optim", optim.str()}},
                          /*sync=*/true);
}

Result<Checkpoint> LoadCheckpoint(storage::KvStore& kv, const std::string& name, DmoeModel& model,
                                  torch::optim::Adam& optimizer) {
  const std::string prefix = "trainer/" + name + "/";
  DMOE_ASSIGN_OR_RETURN(std::string meta_text, kv.Get(kStateFamily, prefix + "meta"));
  DMOE_ASSIGN_OR_RETURN(std::string params, kv.Get(kStateFamily, prefix + "params"));
  DMOE_ASSIGN_OR_RETURN(std::string optim, kv.Get(kStateFamily, prefix + "optim"));
  nlohmann::json meta = nlohmann::json::parse(meta_text, nullptr, false);
  if (meta.is_discarded() || !meta.contains("step"))
    return InternalError("trainer checkpoint meta is corrupt");
  DMOE_ASSIGN_OR_RETURN(
      tensor::TorchPayload payload,
      tensor::DecodeToTorch({reinterpret_cast<const uint8_t*>(params.data()), params.size()}));
  DMOE_RETURN_IF_ERROR(model->LoadStateDict(payload.tensors));
  try {
    std::istringstream in(optim);
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    optimizer.load(archive);
  } catch (const std::exception& e) {
    return InternalError(std::string("cannot restore the optimizer: ") + e.what());
  }
  return Checkpoint{meta["step"].get<int64_t>(), meta.value("version", int64_t{0})};
}

}  // namespace

Result<TensorSplit> LoadFashionMnistTensors(bool train, const std::string& dir) {
  DMOE_ASSIGN_OR_RETURN(ImageDataset d,
                        dir.empty() ? LoadFashionMnist(train) : LoadFashionMnist(train, dir));
  const int64_t pixels = d.rows * d.cols;
  TensorSplit s;
  s.x = at::from_blob(d.pixels.data(), {d.count, pixels}, at::kByte).to(at::kFloat).div_(255.0);
  s.y = at::from_blob(d.labels.data(), {d.count}, at::kByte).to(at::kLong);
  return s;
}

std::vector<int64_t> EpochOrder(uint64_t seed, int64_t epoch, int64_t n) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 1'000'003 + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

double ScheduledLr(double lr, const std::string& schedule, int64_t step, int64_t steps) {
  return schedule == "cosine" ? CosineDecay(lr, step, steps) : lr;
}

Result<TrainerResult> RunTrainer(const TrainerOptions& o, std::ostream& out,
                                 const std::atomic<bool>* stop) {
  if (o.data != "fashion-mnist") return InvalidArgumentError("--data must be fashion-mnist");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine") {
    return InvalidArgumentError("--lr-schedule must be constant or cosine, got '" + o.lr_schedule +
                                "'");
  }
  if (o.steps < 0 || o.batch_size < 1 || o.eval_every < 0 || o.publish_every < 0 ||
      o.log_every < 1) {
    return InvalidArgumentError(
        "steps, eval/publish intervals must be >= 0; batch size and log interval >= 1");
  }
  std::ifstream spec_file(o.spec_path);
  if (!spec_file) return NotFoundError("cannot read model spec " + o.spec_path);
  std::stringstream spec_buf;
  spec_buf << spec_file.rdbuf();
  const std::string spec_json = spec_buf.str();
  DMOE_ASSIGN_OR_RETURN(ModelSpec spec, ParseModelSpec(spec_json));
  DMOE_ASSIGN_OR_RETURN(TensorSplit train, LoadFashionMnistTensors(true, o.data_dir));
  DMOE_ASSIGN_OR_RETURN(TensorSplit test, LoadFashionMnistTensors(false, o.data_dir));
  if (o.batch_size > train.x.size(0)) {
    return InvalidArgumentError("--batch-size " + std::to_string(o.batch_size) + " exceeds the " +
                                std::to_string(train.x.size(0)) + " training images");
  }
  if (train.x.size(1) != spec.input_dim) {
    return InvalidArgumentError("the spec's input_dim is " + std::to_string(spec.input_dim) +
                                " but Fashion-MNIST images have " +
                                std::to_string(train.x.size(1)) + " pixels");
  }
  DMOE_ASSIGN_OR_RETURN(safetensors::DType wire, WireDtype(o.wire_dtype));

  std::optional<Identity> identity;
  if (!o.identity_path.empty()) {
    DMOE_ASSIGN_OR_RETURN(identity, LoadOrCreateIdentity(o.identity_path));
  }
  dht::DhtOptions dht_options;
  dht_options.bootstrap = o.dht_bootstrap;
  dht_options.node.client = true;
  dht_options.node.network = o.dht_network;
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<dht::Dht> dht, dht::Dht::Start(std::move(dht_options)));
  DMOE_RETURN_IF_ERROR(dht->WaitBootstrapped(std::chrono::seconds(10)));
  SwarmOptions swarm_options;
  swarm_options.caller.identity = identity;
  auto swarm = std::make_shared<Swarm>(dht.get(), swarm_options);

  torch::manual_seed(o.seed);
  DmoeModel model(spec, ModelContext{swarm, wire, o.balance_loss_weight, o.allow_zero_outputs});
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(o.lr));

  std::unique_ptr<storage::KvStore> kv;
  Checkpoint state;
  if (!o.db_dir.empty()) {
    DMOE_ASSIGN_OR_RETURN(kv, storage::KvStore::Open(o.db_dir));
    Result<Checkpoint> resumed = LoadCheckpoint(*kv, spec.name, model, optimizer);
    if (resumed.ok()) {
      state = *resumed;
      out << "resumed from step " << state.step << "\n" << std::flush;
    } else if (resumed.status().code() != Code::kNotFound) {
      return resumed.status();
    }
  }

  const int64_t n = train.x.size(0);
  const int64_t per_epoch = n / o.batch_size;
  TrainerResult result;
  double window_loss = 0;
  int64_t window_correct = 0, window_samples = 0, window_steps = 0, failed_steps = 0;
  MoeStats window_start = model->moe_stats();
  auto window_clock = std::chrono::steady_clock::now();
  int64_t epoch = -1;
  std::vector<int64_t> order;
  auto publish = [&](int64_t step) {
    if (o.router_url.empty()) return;
    const int64_t version = std::max(state.version + 1, RealClock::Instance().NowUnixMs());
    Status s = Publish(o, model, spec_json, identity, version, step);
    if (s.ok()) {
      state.version = version;
      result.published_version = version;
      out << "published " << spec.name << " version " << version << " at step " << step << "\n"
          << std::flush;
    } else {
      spdlog::warn("publishing to {} failed: {}", o.router_url, s.ToString());
    }
  };
  auto checkpoint = [&]() {
    if (!kv) return;
    Status s = SaveCheckpoint(*kv, spec.name, model, optimizer, state);
    if (!s.ok()) spdlog::error("trainer checkpoint failed: {}", s.ToString());
  };

  model->train();
  int64_t last_eval_step = -1;
  double lr_now = o.lr;
  while (state.step < o.steps && !(stop && stop->load())) {
    const int64_t e = state.step / per_epoch;
    if (e != epoch) {
      epoch = e;
      order = EpochOrder(o.seed, epoch, n);
    }
    const int64_t offset = (state.step % per_epoch) * o.batch_size;
    at::Tensor idx = at::from_blob(order.data() + offset, {o.batch_size}, at::kLong).clone();
    at::Tensor x = train.x.index_select(0, idx);
    at::Tensor y = train.y.index_select(0, idx);
    try {
      at::Tensor logits = model->forward(x);
      at::Tensor loss = at::cross_entropy_loss(logits, y);
      optimizer.zero_grad();
      (loss + model->balance_loss()).backward();
      lr_now = ScheduledLr(o.lr, o.lr_schedule, state.step, o.steps);
      for (auto& group : optimizer.param_groups()) {
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_now);
      }
      optimizer.step();
      window_loss += loss.item<double>();
      window_correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      window_samples += o.batch_size;
      ++window_steps;
    } catch (const std::exception& ex) {
      // Not enough experts answered: skip this batch, the swarm may recover.
      ++failed_steps;
      spdlog::warn("step {} skipped: {}", state.step + 1, ex.what());
    }
    ++state.step;
    if (state.step % o.log_every == 0 || state.step == o.steps) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window_clock).count();
      MoeStats now = model->moe_stats();
      const double answers = static_cast<double>(now.answers - window_start.answers);
      const double routed = static_cast<double>(now.samples - window_start.samples);
      out << "step " << state.step << "/" << o.steps << std::fixed << std::setprecision(4)
          << " loss " << (window_steps ? window_loss / window_steps : 0.0) << " train_acc "
          << (window_samples ? static_cast<double>(window_correct) / window_samples : 0.0)
          << std::setprecision(1) << " samples/s " << (seconds > 0 ? window_samples / seconds : 0.0)
          << std::setprecision(2) << " experts/sample " << (routed > 0 ? answers / routed : 0.0)
          << " zero_output_samples " << (now.zero_output_samples - window_start.zero_output_samples)
          << " skipped_steps " << failed_steps << std::setprecision(6) << " lr " << lr_now << "\n"
          << std::defaultfloat << std::flush;
      window_loss = 0;
      window_correct = window_samples = window_steps = 0;
      window_start = now;
      window_clock = std::chrono::steady_clock::now();
    }
    if (o.eval_every > 0 && state.step % o.eval_every == 0 && state.step < o.steps) {
      double acc = Evaluate(model, test, o.eval_samples);
      last_eval_step = state.step;
      out << "eval step " << state.step << " test_accuracy " << std::fixed << std::setprecision(4)
          << acc << "\n"
          << std::defaultfloat << std::flush;
    }
    if (o.publish_every > 0 && state.step % o.publish_every == 0 && state.step < o.steps) {
      publish(state.step);
      checkpoint();
    }
  }
  result.steps_done = state.step;
  // Also when stopped early (SIGINT/SIGTERM): the accuracy of what is published last.
  if (state.step >= o.steps || (state.step > 0 && last_eval_step != state.step)) {
    result.final_test_accuracy = Evaluate(model, test, o.eval_samples);
    out << "eval step " << state.step << " test_accuracy " << std::fixed << std::setprecision(4)
        << result.final_test_accuracy << "\n"
        << std::defaultfloat << std::flush;
  }
  publish(state.step);
  checkpoint();
  dht->Stop();
  return result;
}

}  // namespace dmoe::gating
