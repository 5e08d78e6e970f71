#include "expert_server/server.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <limits>
#include <set>

#include "core/uid.h"
#include "dht/announcement.h"
#include "expert_server/hosting.h"
#include "expert_server/maintenance.h"
#include "expert_server/process_memory.h"
#include "expert_server/server_impl.h"
#include "net/buffer_pool.h"
#include "net/url.h"

namespace dmoe::expert_server {

Result<std::unique_ptr<ExpertServer>> ExpertServer::Start(ExpertServerOptions options) {
  if (options.clock == nullptr) {
    return InvalidArgumentError("ExpertServerOptions::clock is not set: pass the process's clock");
  }
  if (!options.identity) {
    return InvalidArgumentError(
        "ExpertServerOptions::identity is not set: pass the server's identity");
  }
  if (options.dht != nullptr && options.dht->peer_id() != options.identity->peer_id()) {
    return InvalidArgumentError("the DHT node's peer id " + options.dht->peer_id() +
                                " is not the server's " + options.identity->peer_id() +
                                ": start the node with the server's identity");
  }
  auto server = std::make_unique<ServerImpl>(std::move(options));
  Status s = server->Init();
  if (!s.ok()) {
    server->Stop();
    return s;
  }
  return std::unique_ptr<ExpertServer>(std::move(server));
}

ServerImpl::ServerImpl(ExpertServerOptions options)
    : options_(std::move(options)),
      clock_(*options_.clock),
      sequence_experts_(options_.expert.type == "transformer"),
      identity_(*options_.identity),
      store_(options_.store),
      dht_(options_.dht),
      started_ms_(clock_.NowUnixMs()) {}

ServerImpl::~ServerImpl() { Stop(); }

Status ExpertServer::CheckOptions(const ExpertServerOptions& options) {
  if (options.uids.empty()) return InvalidArgumentError("no experts to host");
  std::set<std::string> unique;
  for (const std::string& uid : options.uids) {
    DMOE_RETURN_IF_ERROR(ParseExpertUid(uid));
    if (!unique.insert(uid).second)
      return InvalidArgumentError("expert " + uid + " is listed twice");
  }
  if (options.fail_rate < 0 || options.fail_rate > 1) {
    return InvalidArgumentError("fail rate must be in [0, 1]");
  }
  if (options.nan_rate < 0 || options.nan_rate > 1) {
    return InvalidArgumentError("nan rate must be in [0, 1]");
  }

  std::optional<HostPort> public_endpoint;
  if (!options.public_endpoint.empty()) {
    if (!options.public_host.empty()) {
      return InvalidArgumentError("public endpoint '" + options.public_endpoint +
                                  "' and public host '" + options.public_host +
                                  "' are both set: give one (the endpoint names the host too)");
    }
    DMOE_ASSIGN_OR_RETURN(public_endpoint,
                          ParseHostPort(options.public_endpoint, PortRule::kNonZeroPort));
  }
  // Others reach the server at its announced host too: that host is as public as a listen host.
  const std::string announced_host = public_endpoint               ? public_endpoint->host
                                     : options.public_host.empty() ? options.listen_host
                                                                   : options.public_host;
  if (options.trainer_keys_path.empty() && !options.open_training &&
      (!net::IsLoopbackHost(options.listen_host) || !net::IsLoopbackHost(announced_host))) {
    const std::string& open_host =
        net::IsLoopbackHost(options.listen_host) ? announced_host : options.listen_host;
    return InvalidArgumentError(
        "refusing to serve training on " + open_host +
        " without --trainer-keys: anyone who reaches this address could change the weights. Pass "
        "--trainer-keys FILE, or --open-training to allow it knowingly");
  }
  return Status::Ok();
}

Status ServerImpl::Init() {
  DMOE_RETURN_IF_ERROR(CheckOptions(options_));
  if (!options_.public_endpoint.empty()) {
    DMOE_ASSIGN_OR_RETURN(public_endpoint_,
                          ParseHostPort(options_.public_endpoint, PortRule::kNonZeroPort));
  }
  if (!options_.trainer_keys_path.empty()) {
    DMOE_ASSIGN_OR_RETURN(std::set<PublicKey> keys,
                          RequestVerifier::LoadKeyFile(options_.trainer_keys_path));
    verifier_ = std::make_unique<RequestVerifier>(std::move(keys), identity_.peer_id(), clock_);
  }

  RuntimeOptions runtime_options = options_.runtime;
  Histogram& batch_sizes =
      metrics_.GetHistogram("dmoe_batch_size", "Samples per computed batch.", SizeBuckets());
  runtime_options.on_batch = [&batch_sizes](int64_t samples) {
    batch_sizes.Observe(static_cast<double>(samples));
  };
  runtime_options.clock = &clock_;
  DMOE_ASSIGN_OR_RETURN(runtime_, CreateRuntime(options_.uids, options_.expert, options_.optimizer,
                                                store_, std::move(runtime_options)));
  runtime_->Start();
  RegisterRuntimeMetrics();

  net::HttpServerOptions http_options;
  http_options.host = options_.listen_host;
  http_options.port = options_.listen_port;
  http_options.threads = options_.net_threads;
  http_options.max_body_bytes = options_.max_body_bytes;
  http_options.max_held_request_bytes = options_.max_held_request_bytes;
  http_options.max_connections = options_.max_connections;
  http_options.max_connections_per_ip = options_.max_connections_per_ip;
  http_options.buffer_pool = options_.buffer_pool;
  net::IoContext* io = options_.io;
  if (io == nullptr) {
    own_io_ = std::make_unique<net::IoContext>(std::max(1, options_.net_threads));
    io = own_io_.get();
  }
  http_ = std::make_unique<net::HttpServer>(http_options, io);
  RegisterRoutes();
  RegisterMemoryMetrics();
  DMOE_RETURN_IF_ERROR(http_->Start());

  if (dht_ != nullptr) {
    // Announcing before the node joined would reach nobody until the next period.
    Status joined = dht_->WaitBootstrapped(std::chrono::seconds(5));
    if (!joined.ok()) spdlog::warn("DHT: {} (will keep trying)", joined.ToString());
    Announce();
  }
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
  spdlog::info("hosting {} {} experts (hidden_dim {}), peer_id {}", options_.uids.size(),
               options_.expert.type, options_.expert.hidden_dim, identity_.peer_id());
  return Status::Ok();
}

void ServerImpl::RegisterRuntimeMetrics() {
  const Runtime* rt = runtime_.get();
  metrics_.AddCallbackCounter("dmoe_refused_gradients_total",
                              "Backward requests refused before any weight changed.",
                              {{"reason", "nonfinite"}},
                              [rt] { return static_cast<double>(rt->stats().refused_nonfinite); });
  metrics_.AddCallbackCounter(
      "dmoe_refused_gradients_total", "Backward requests refused before any weight changed.",
      {{"reason", "stale"}}, [rt] { return static_cast<double>(rt->stats().refused_stale); });
  metrics_.AddCallbackCounter("dmoe_overload_refusals_total",
                              "Requests refused with resource_exhausted (queue full).", {},
                              [rt] { return static_cast<double>(rt->stats().refused_overload); });
  metrics_.AddCallbackCounter("dmoe_batches_total", "Batches computed.", {},
                              [rt] { return static_cast<double>(rt->stats().batches); });
  metrics_.AddCallbackGauge("dmoe_load", "Queued samples over queue capacity, 0..1.", {},
                            [rt] { return rt->load(); });
  for (const std::string& uid : rt->uids()) {
    metrics_.AddCallbackGauge("dmoe_expert_step", "Optimizer steps of each expert.", {{"uid", uid}},
                              [rt, uid] { return static_cast<double>(rt->step(uid)); });
    metrics_.AddCallbackGauge("dmoe_queue_depth", "Samples waiting for each expert.",
                              {{"uid", uid}},
                              [rt, uid] { return static_cast<double>(rt->queued_samples(uid)); });
  }
}

void ServerImpl::RegisterMemoryMetrics() {
  const net::HttpServer* http = http_.get();
  metrics_.AddCallbackGauge(
      "dmoe_held_request_bytes",
      "Bytes of requests held from arrival until answered (limit: --max-held-request-mib).", {},
      [http] { return static_cast<double>(http->held_request_bytes()); });
  metrics_.AddCallbackGauge("dmoe_requests_waiting",
                            "Connections whose next request waits unread for room.", {},
                            [http] { return static_cast<double>(http->requests_waiting()); });
  metrics_.AddCallbackGauge(
      "dmoe_buffer_pool_idle_bytes",
      "Body and message buffers kept for reuse (net::BufferPool, at most 8 MiB).", {},
      [http] { return static_cast<double>(http->buffer_pool().stats().idle_bytes); });
  for (const bool reused : {true, false}) {
    metrics_.AddCallbackCounter(
        "dmoe_buffer_pool_takes_total",
        "Buffers of 64 KiB or more taken for bodies and messages: reused from the pool, or "
        "missed (newly allocated).",
        {{"result", reused ? "reused" : "missed"}}, [http, reused] {
          const net::BufferPoolStats stats = http->buffer_pool().stats();
          return static_cast<double>(reused ? stats.reused : stats.missed);
        });
  }
  if (!TensorMemoryStats()) return;  // The process did not call ConfigureProcessMemory.
  auto tensor_gauge = [this](const char* name, const char* help, Metrics::Labels labels,
                             int64_t tensor::CpuAllocatorStats::*field) {
    metrics_.AddCallbackGauge(name, help, std::move(labels), [field] {
      return static_cast<double>((*TensorMemoryStats()).*field);
    });
  };
  tensor_gauge("dmoe_tensor_memory_bytes",
               "Tensor blocks of the caching allocator: held by tensors, or idle.",
               {{"state", "live"}}, &tensor::CpuAllocatorStats::live_bytes);
  tensor_gauge("dmoe_tensor_memory_bytes",
               "Tensor blocks of the caching allocator: held by tensors, or idle.",
               {{"state", "idle"}}, &tensor::CpuAllocatorStats::idle_bytes);
  tensor_gauge("dmoe_tensor_memory_peak_live_bytes",
               "The most tensor memory held at once since the start.", {},
               &tensor::CpuAllocatorStats::peak_live_bytes);
}

std::string ServerImpl::endpoint() const {
  if (public_endpoint_) return "http://" + public_endpoint_->ToString();
  if (options_.public_host.empty()) return listen_endpoint();
  return "http://" + HostPort{options_.public_host, http_->port()}.ToString();
}

std::string ServerImpl::listen_endpoint() const {
  std::string host = options_.listen_host;
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  return "http://" + HostPort{host, http_->port()}.ToString();
}

Status ServerImpl::CheckpointNow() {
  if (store_ == nullptr) return UnavailableError("the server runs without --db");
  std::lock_guard<std::mutex> lock(checkpoint_mu_);
  std::vector<std::pair<std::string, Status>> outcomes = CheckpointExperts(*runtime_, *store_);
  Status first_error;
  for (const auto& [uid, saved] : outcomes) {
    if (!saved.ok()) {
      metrics_.GetCounter("dmoe_checkpoint_errors_total", "Checkpoints that failed.").Increment();
      spdlog::warn("checkpoint of {} failed: {}", uid, saved.message());
      if (first_error.ok()) first_error = saved;
    }
  }
  DMOE_RETURN_IF_ERROR(first_error);
  metrics_.GetCounter("dmoe_checkpoints_total", "Checkpoints written (all experts).").Increment();
  spdlog::debug("checkpointed {} experts", outcomes.size());
  return Status::Ok();
}

ExpertServerStats ServerImpl::stats() const {
  ExpertServerStats out;
  for (const std::string& uid : runtime_->uids()) out.steps[uid] = runtime_->step(uid);
  const RuntimeStats runtime = runtime_->stats();
  out.batches = runtime.batches;
  out.tasks = runtime.tasks;
  out.samples = runtime.samples;
  return out;
}

void ServerImpl::MaintenanceLoop() {
  constexpr int64_t kUsPerS = 1'000'000;
  // Only the timers of work this server does: a checkpoint time that is never advanced (no
  // --db) would lie in the past forever and turn the wait into a spin.
  MaintenanceTimers timers(
      clock_.NowMonotonicUs(),
      store_ ? std::optional<int64_t>(options_.checkpoint_every_s * kUsPerS) : std::nullopt,
      dht_ ? std::optional<int64_t>(options_.announce_every_s * kUsPerS) : std::nullopt);
  Counter& wakeups = metrics_.GetCounter("dmoe_maintenance_wakeups_total",
                                         "Wake-ups of the checkpoint and announcement thread.");
  auto stopping = [this] { return stopping_; };
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const int64_t due_us = timers.next_due_us();
    if (due_us == std::numeric_limits<int64_t>::max()) {
      cv_.wait(lock, stopping);
    } else {
      const int64_t wait_us = std::max<int64_t>(0, due_us - clock_.NowMonotonicUs());
      cv_.wait_for(lock, std::chrono::microseconds(wait_us), stopping);
    }
    if (stopping_) break;
    wakeups.Increment();
    lock.unlock();
    const MaintenanceTimers::Due due = timers.TakeDue(clock_.NowMonotonicUs());
    if (due.checkpoint) {
      Status s = CheckpointNow();
      if (!s.ok()) spdlog::error("checkpoint failed: {}", s.ToString());
    }
    if (due.announce) Announce();
    lock.lock();
  }
}

void ServerImpl::Announce() {
  const std::string peer = identity_.peer_id();
  const auto ttl = std::chrono::seconds(options_.announce_ttl_s);
  const double load = runtime_->load();
  std::set<std::pair<std::string, std::string>> prefixes_done;
  auto log_failure = [](std::string what) {
    return [what](Result<int> r) {
      if (!r.ok()) spdlog::debug("announce {}: {}", what, r.status().ToString());
    };
  };
  for (const std::string& uid_text : options_.uids) {
    ExpertUid uid = *ParseExpertUid(uid_text);
    dht::ExpertAnnouncement value{endpoint(), runtime_->step(uid_text), load, options_.expert.type,
                                  options_.expert.hidden_dim};
    dht_->Put(dht::ExpertKey(uid_text), peer, value.ToJson(), ttl,
              log_failure(dht::ExpertKey(uid_text)));
    for (size_t depth = 0; depth < uid.indices.size(); ++depth) {
      std::string key = dht::PrefixKey(uid.GridPrefixAt(depth));
      std::string subkey = std::to_string(uid.indices[depth]);
      if (!prefixes_done.insert({key, subkey}).second) continue;
      dht_->Put(key, subkey, dht::PrefixEntry{uid_text, peer}.ToJson(), ttl,
                log_failure(key + " " + subkey));
    }
  }
}

bool ServerImpl::InjectFailure() {
  if (options_.fail_rate <= 0) return false;
  std::lock_guard<std::mutex> lock(rng_mu_);
  return std::uniform_real_distribution<double>(0, 1)(rng_) < options_.fail_rate;
}

bool ServerImpl::InjectNan() {
  if (options_.nan_rate <= 0) return false;
  std::lock_guard<std::mutex> lock(rng_mu_);
  return std::uniform_real_distribution<double>(0, 1)(rng_) < options_.nan_rate;
}

void ServerImpl::Stop() {
  if (stopped_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
  // In-flight requests finish (the runtime still runs), new ones are refused.
  if (http_) http_->Stop(std::chrono::seconds(5));
  if (own_io_) own_io_->Stop();  // As HttpServer::Stop stops an io_context of its own.
  if (runtime_) {
    runtime_->Stop();
    if (store_) {
      Status s = CheckpointNow();
      if (s.ok()) {
        spdlog::info("final checkpoint written");
      } else {
        spdlog::error("final checkpoint failed: {}", s.ToString());
      }
    }
  }
  // The lent DHT node and store stay with their owner, who stops and closes them after this.
}

}  // namespace dmoe::expert_server
