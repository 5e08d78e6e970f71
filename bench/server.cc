// bench/server: what serving an expert over the network costs against calling it in-process.
//
// For an ffn expert (d = 1024) at batch 16 and 256 with 1, 4 and 16 concurrent clients, measures
// forward and forward+backward samples/s three ways in the same run, interleaved in rounds within
// each cell so that the changing load of a shared machine hits all three alike:
//   - inproc: an expert_server::Runtime with the server's default options in this process, called
//     from client threads (the same batching, no network, no codec);
//   - http:   a real dmoe-server process, POST /v1/experts/{uid}/forward|backward, one keep-alive
//     connection per client;
//   - ws:     the same server over /v1/ws, one connection per client (PROTOCOL section 4).
// Each row also shows the mean batch the runtime computed (how well it merged concurrent requests).
// Then prints the ratios remote/in-process, the p50 latency one call adds at batch 16, and the
// server's peak RSS (VmHWM) against its weights and optimizer state. Goals (reported, not
// asserted): ratio >= 0.95 for forward+backward and >= 0.97 for forward at batch 256 with 8-16
// clients; added p50 at batch 16 <= 0.5 ms; RSS <= 1.5 x (weights + optimizer) + 200 MB.
//
// Clients run in this process on the same cores as the server, so remote figures include the
// clients' own encoding, copies and socket work, which a real trainer does on its own machine.
//
//   server [--smoke] [--seconds S] [--batches 16,256] [--clients 1,4,16]
//          [--ops forward|forward+backward|both] [--server-arg FLAG]...
// writes JSON to ${DMOE_BENCH_OUT:-bench/results}/server.json. --smoke (d = 64, batch 16, one
// client, one round) takes a few seconds, for CI. Exit status 1 when a call failed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/harness.h"
#include "core/clock.h"
#include "expert_server/expert.h"
#include "expert_server/process_memory.h"
#include "expert_server/runtime.h"
#include "expert_server/task.h"
#include "net/buffer_pool.h"
#include "net/http_client.h"
#include "tensor/safetensors.h"
#include "tests/testing/processes.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dmoe::Result;
using dmoe::Status;
using dmoe::bench::Percentile;
namespace es = dmoe::expert_server;
namespace st = dmoe::safetensors;

constexpr char kUid[] = "bench.0";
// Small enough that thousands of steps leave the weights finite; Adam's cost does not depend on it.
constexpr double kLr = 1e-6;

struct Config {
  bool smoke = false;
  int64_t d = 1024;
  std::vector<int64_t> batches = {16, 256};
  std::vector<int> clients = {1, 4, 16};
  bool forward = true, forward_backward = true;  // which ops to measure
  double seconds = 5.0;                          // measured window per cell
  double warmup = 0.3;                           // per slice, before its window opens
  // Each cell runs its modes in turn this many times (in, http, ws, in, http, ws, ...), each slice
  // measuring seconds / rounds, so that a shared machine's changing load hits every mode alike.
  int rounds = 3;
  int latency_calls = 200;
  // Extra dmoe-server flags, for experiments (e.g. --max-body-mib 4).
  std::vector<std::string> server_args;
};

enum class Op { kForward, kForwardBackward };
const char* OpName(Op op) { return op == Op::kForward ? "forward" : "forward+backward"; }

// One client's inputs, as tensors (in-process) and as request blobs (remote).
struct Inputs {
  at::Tensor x, grad_y;
  std::vector<uint8_t> forward_blob, backward_blob;        // HTTP bodies
  std::vector<uint8_t> ws_forward_blob, ws_backward_blob;  // with id/op/uid metadata
};

Inputs MakeInputs(int64_t batch, int64_t d, int client) {
  Inputs in;
  at::manual_seed(1000 + client);
  in.x = at::randn({batch, d});
  in.grad_y = at::randn({batch, d}) * 1e-3;
  auto ref = [](const char* name, const at::Tensor& t) {
    return st::TensorRef{name,
                         st::DType::kF32,
                         {t.size(0), t.size(1)},
                         {static_cast<const uint8_t*>(t.data_ptr()),
                          static_cast<size_t>(t.numel()) * sizeof(float)}};
  };
  const std::string id = "c" + std::to_string(client);
  in.forward_blob = *st::Encode({ref("x", in.x)});
  in.backward_blob = *st::Encode({ref("x", in.x), ref("grad_y", in.grad_y)});
  in.ws_forward_blob =
      *st::Encode({ref("x", in.x)}, {{"id", id}, {"op", "forward"}, {"uid", kUid}});
  in.ws_backward_blob = *st::Encode({ref("x", in.x), ref("grad_y", in.grad_y)},
                                    {{"id", id}, {"op", "backward"}, {"uid", kUid}});
  return in;
}

// Checks an answer blob: decodable, no error, holds `name` with `elements` F32 values.
Status CheckAnswer(std::span<const uint8_t> blob, const char* name, int64_t elements) {
  DMOE_ASSIGN_OR_RETURN(st::Decoded d, st::Decode(blob));
  auto err = d.metadata.find("error_code");
  if (err != d.metadata.end()) {
    return dmoe::InternalError("server answered " + err->second + ": " +
                               d.metadata["error_message"]);
  }
  const st::TensorView* t = d.Find(name);
  if (t == nullptr || t->NumElements() != elements) {
    return dmoe::InternalError(std::string("answer lacks ") + name + " of the right size");
  }
  return Status::Ok();
}

// A request body as a client makes one per call: the blob copied into a buffer from the client's
// pool (a real client encodes into it; the copy costs what the encoding's copy of the tensor does).
dmoe::net::Bytes PooledCopy(dmoe::net::BufferPool& pool, const std::vector<uint8_t>& blob) {
  dmoe::net::Bytes body = pool.Take(blob.size());
  body.assign(blob.begin(), blob.end());
  return body;
}

// Batches the runtime computed and the samples in them, so far.
struct BatchCount {
  int64_t batches = 0;
  int64_t samples = 0;
};

// One way of calling the expert: Call runs one forward or backward for client `c`, blocking.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual Status Call(int c, bool backward) = 0;
  // The runtime's counters; the mean batch size of a cell shows how well it merged requests.
  virtual BatchCount Batches() = 0;
};

// The server's dmoe_batch_size histogram (_count batches, _sum samples) from GET /metrics.
BatchCount RemoteBatches(const std::string& endpoint) {
  BatchCount count;
  auto r = dmoe::net::Fetch("GET", endpoint + "/metrics");
  if (!r.ok() || r->status != 200) return count;
  std::istringstream lines{std::string(r->body_view())};
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("dmoe_batch_size_count ", 0) == 0) count.batches = std::atoll(line.c_str() + 22);
    if (line.rfind("dmoe_batch_size_sum ", 0) == 0) count.samples = std::atoll(line.c_str() + 20);
  }
  return count;
}

class InProcess : public Transport {
 public:
  InProcess(es::Runtime& runtime, const std::vector<Inputs>& inputs)
      : runtime_(runtime), inputs_(inputs) {}
  const char* name() const override { return "inproc"; }
  Status Call(int c, bool backward) override {
    es::Task task;
    task.kind = backward ? es::TaskKind::kBackward : es::TaskKind::kForward;
    task.x = inputs_[c].x;
    if (backward) task.grad_y = inputs_[c].grad_y;
    std::promise<Status> done;
    task.done = [&done](Result<es::TaskResult> r) { done.set_value(r.status()); };
    DMOE_RETURN_IF_ERROR(runtime_.Submit(kUid, std::move(task)));
    return done.get_future().get();
  }
  BatchCount Batches() override {
    es::RuntimeStats stats = runtime_.stats();
    return {stats.batches, stats.samples};
  }

 private:
  es::Runtime& runtime_;
  const std::vector<Inputs>& inputs_;
};

class Http : public Transport {
 public:
  Http(std::string endpoint, const std::vector<Inputs>& inputs)
      : endpoint_(std::move(endpoint)), inputs_(inputs), client_({.threads = 2}) {}
  const char* name() const override { return "http"; }
  Status Call(int c, bool backward) override {
    const Inputs& in = inputs_[c];
    Result<dmoe::net::Response> r = client_.Fetch(
        "POST", endpoint_ + "/v1/experts/" + kUid + (backward ? "/backward" : "/forward"),
        {{"Content-Type", "application/x-safetensors"}},
        PooledCopy(client_.buffer_pool(), backward ? in.backward_blob : in.forward_blob), 60s);
    if (!r.ok()) return r.status();
    Status s = CheckAnswer(r->body, backward ? "grad_x" : "y", in.x.numel());
    client_.buffer_pool().Give(std::move(r->body));
    return s;
  }
  BatchCount Batches() override { return RemoteBatches(endpoint_); }

 private:
  std::string endpoint_;
  const std::vector<Inputs>& inputs_;
  dmoe::net::HttpClient client_;
};

class WebSocket : public Transport {
 public:
  WebSocket(std::string endpoint, const std::vector<Inputs>& inputs)
      : endpoint_(endpoint), inputs_(inputs), client_({.threads = 2}) {
    url_ = "ws://" + endpoint.substr(std::strlen("http://")) + "/v1/ws";
    for (size_t i = 0; i < inputs.size(); ++i) slots_.push_back(std::make_shared<Slot>());
  }
  const char* name() const override { return "ws"; }

  // Opens one connection per client.
  Status Connect() {
    for (auto& slot : slots_) {
      std::promise<Result<std::shared_ptr<dmoe::net::WsConnection>>> p;
      dmoe::net::WsHandlers handlers{
          .on_open = {},
          .on_message =
              [slot](const std::shared_ptr<dmoe::net::WsConnection>&, dmoe::net::Bytes m) {
                std::lock_guard<std::mutex> lock(slot->mu);
                slot->answer = std::move(m);
                slot->cv.notify_all();
              },
          .on_close = {}};
      client_.Connect(url_, {}, std::move(handlers), Clock::now() + 30s,
                      [&p](auto r) { p.set_value(std::move(r)); });
      DMOE_ASSIGN_OR_RETURN(slot->conn, p.get_future().get());
    }
    return Status::Ok();
  }

  Status Call(int c, bool backward) override {
    Slot& slot = *slots_[c];
    const Inputs& in = inputs_[c];
    {
      std::lock_guard<std::mutex> lock(slot.mu);
      slot.answer.reset();
    }
    DMOE_RETURN_IF_ERROR(slot.conn->Send(
        PooledCopy(client_.buffer_pool(), backward ? in.ws_backward_blob : in.ws_forward_blob)));
    std::unique_lock<std::mutex> lock(slot.mu);
    if (!slot.cv.wait_for(lock, 60s, [&] { return slot.answer.has_value(); })) {
      return dmoe::DeadlineExceededError("no WebSocket answer in 60 s");
    }
    Status s = CheckAnswer(*slot.answer, backward ? "grad_x" : "y", in.x.numel());
    client_.buffer_pool().Give(std::move(*slot.answer));
    return s;
  }
  BatchCount Batches() override { return RemoteBatches(endpoint_); }

  // Connections go before the client (their destructors use its io_context); dropping them here
  // also breaks the cycle slot -> connection -> handler -> slot.
  ~WebSocket() override {
    for (auto& slot : slots_) {
      if (slot->conn) slot->conn->Close();
      slot->conn.reset();
    }
  }

 private:
  struct Slot {
    std::shared_ptr<dmoe::net::WsConnection> conn;
    std::mutex mu;
    std::condition_variable cv;
    std::optional<dmoe::net::Bytes> answer;
  };
  std::string endpoint_, url_;
  const std::vector<Inputs>& inputs_;
  dmoe::net::WsClient client_;
  std::vector<std::shared_ptr<Slot>> slots_;
};

// One mode of one cell, summed over its rounds.
struct CellResult {
  std::string mode;
  int64_t completed = 0;             // iterations completed inside the measured windows
  double window_s = 0;               // the windows' total length
  std::vector<double> latencies_ms;  // of one iteration (forward, or forward then backward)
  BatchCount batches;                // computed by the runtime during the slices
  std::string error;

  double samples_per_s(int64_t batch) const {
    return window_s > 0 ? static_cast<double>(completed * batch) / window_s : 0;
  }
  double mean_batch() const {
    return batches.batches > 0
               ? static_cast<double>(batches.samples) / static_cast<double>(batches.batches)
               : 0;
  }
};

// Runs `clients` threads that loop over iterations (forward, or forward then backward) for one
// slice: `warmup_s`, then a measured window of `window_s`. Only iterations that complete inside
// the window count, so clients that start or finish late do not bias the rate.
void RunSlice(Transport& t, Op op, int clients, double warmup_s, double window_s,
              CellResult* result) {
  const BatchCount before = t.Batches();
  const auto start = Clock::now() + 20ms;
  const auto open =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup_s));
  const auto close =
      open + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(window_s));
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::this_thread::sleep_until(start);  // a common start line, not a wait for an event
      while (Clock::now() < close) {
        const auto t0 = Clock::now();
        Status s = t.Call(c, false);
        if (s.ok() && op == Op::kForwardBackward) s = t.Call(c, true);
        const auto t1 = Clock::now();
        std::lock_guard<std::mutex> lock(mu);
        if (!s.ok()) {
          result->error = s.ToString();
          return;
        }
        if (t1 >= open && t1 < close) {
          ++result->completed;
          result->latencies_ms.push_back(
              std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  result->window_s += window_s;
  const BatchCount after = t.Batches();
  result->batches.batches += after.batches - before.batches;
  result->batches.samples += after.samples - before.samples;
}

double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double one = -1;
  in >> one;
  return one;
}

// p50 of `calls` sequential forwards of client 0 (one call in flight), in ms.
double SequentialP50(Transport& t, int calls) {
  std::vector<double> ms;
  for (int i = 0; i < calls; ++i) {
    const auto t0 = Clock::now();
    Status s = t.Call(0, false);
    if (!s.ok()) {
      std::fprintf(stderr, "%s: %s\n", t.name(), s.ToString().c_str());
      return -1;
    }
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return Percentile(ms, 0.5);
}

// VmHWM and VmRSS of a process, in bytes.
std::map<std::string, int64_t> MemoryOf(pid_t pid) {
  std::map<std::string, int64_t> out;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    for (const char* key : {"VmHWM", "VmRSS"}) {
      if (line.rfind(std::string(key) + ":", 0) == 0) {
        out[key] = std::atoll(line.c_str() + std::strlen(key) + 1) * 1024;
      }
    }
  }
  return out;
}

std::unique_ptr<es::Runtime> MakeRuntime(const Config& config) {
  es::ExpertConfig expert_config;
  expert_config.type = "ffn";
  expert_config.hidden_dim = config.d;
  es::OptimizerOptions optimizer;
  optimizer.lr = kLr;
  auto expert =
      es::Expert::Create(es::ExpertRegistry::WithBuiltins(), kUid, expert_config, optimizer);
  if (!expert.ok()) {
    std::fprintf(stderr, "expert: %s\n", expert.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<std::unique_ptr<es::Expert>> experts;
  experts.push_back(std::move(expert).value());
  // The server's defaults (RuntimeOptions and dmoe-server's flags agree), on the real clock.
  es::RuntimeOptions options;
  options.clock = &dmoe::RealClock::Instance();
  auto runtime = std::make_unique<es::Runtime>(std::move(experts), options);
  runtime->Start();
  return runtime;
}

// "1,4,16" -> {1, 4, 16}; positive values only.
std::vector<int64_t> ParseList(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    const int64_t v = std::atoll(part.c_str());
    if (v > 0) out.push_back(v);
  }
  return out;
}

std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  // The in-process runtime allocates as dmoe-server does.
  es::ConfigureProcessMemory();
  Config config;
  const std::vector<dmoe::bench::ValueFlag> flags = {
      {"--seconds", dmoe::bench::DoubleFlag(&config.seconds)},
      {"--server-arg",
       [&](const std::string& v) {
         config.server_args.push_back(v);
         return true;
       }},
      {"--batches",
       [&](const std::string& v) {
         config.batches = ParseList(v);
         return true;
       }},
      {"--clients",
       [&](const std::string& v) {
         config.clients.clear();
         for (int64_t c : ParseList(v)) config.clients.push_back(static_cast<int>(c));
         return true;
       }},
      {"--ops", [&](const std::string& ops) {
         config.forward = ops == "forward" || ops == "both";
         config.forward_backward = ops == "forward+backward" || ops == "both";
         if (config.forward || config.forward_backward) return true;
         std::fprintf(stderr, "--ops takes forward, forward+backward or both, got '%s'\n",
                      ops.c_str());
         return false;
       }}};
  const bool parsed =
      dmoe::bench::ParseFlags(argc, argv,
                              "[--smoke] [--seconds S] [--batches 16,256] [--clients 1,4,16] "
                              "[--ops forward|forward+backward|both] [--server-arg FLAG]...",
                              flags, &config.smoke, [&] {
                                config.d = 64;
                                config.batches = {16};
                                config.clients = {1};
                                config.seconds = 0.4;
                                config.warmup = 0.1;
                                config.rounds = 1;
                                config.latency_calls = 30;
                              });
  if (!parsed) return 2;
  if (config.batches.empty() || config.clients.empty()) {
    std::fprintf(stderr, "--batches and --clients need at least one positive value\n");
    return 2;
  }
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);

  // The remote expert: a real dmoe-server with the same seed-independent setup as the in-process
  // one (weights differ, cost does not).
  std::vector<std::string> server_flags = {
      "--experts",         kUid,        "--hidden-dim",         std::to_string(config.d), "--lr",
      std::to_string(kLr), "--threads", std::to_string(threads)};
  server_flags.insert(server_flags.end(), config.server_args.begin(), config.server_args.end());
  auto started = dmoe::testing::StartServer(server_flags, 120s);
  if (!started.ok()) {
    std::fprintf(stderr, "dmoe-server did not start: %s\n", started.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<dmoe::testing::Process> server = std::move(started->process);
  const std::string endpoint = started->endpoint;
  std::unique_ptr<es::Runtime> runtime = MakeRuntime(config);

  int64_t params = 0;
  {
    auto info = dmoe::net::Fetch("GET", endpoint + "/v1/experts/" + kUid);
    if (info.ok() && info->status == 200) {
      params = nlohmann::json::parse(info->body_view()).value("params", int64_t{0});
    }
  }

  std::printf("bench/server: ffn d=%lld, %d compute threads, server %s (pid %d)%s\n",
              static_cast<long long>(config.d), threads, endpoint.c_str(), server->pid(),
              config.smoke ? " [smoke]" : "");
  const double load_at_start = LoadAverage();
  std::printf("load average at start %.2f; %d rounds per cell, %.1f s measured per mode\n",
              load_at_start, config.rounds, config.seconds);
  std::printf("%-17s %6s %7s %7s %12s %8s %8s %7s %7s\n", "op", "batch", "clients", "mode",
              "samples/s", "p50 ms", "p90 ms", "batch", "vs in");
  nlohmann::json cells = nlohmann::json::array();
  nlohmann::json ratios = nlohmann::json::array();
  nlohmann::json latency = nlohmann::json::object();
  bool failed = false;

  const int max_clients = *std::max_element(config.clients.begin(), config.clients.end());
  for (int64_t batch : config.batches) {
    std::vector<Inputs> inputs;
    for (int c = 0; c < max_clients; ++c) inputs.push_back(MakeInputs(batch, config.d, c));
    InProcess inproc(*runtime, inputs);
    Http http(endpoint, inputs);
    WebSocket ws(endpoint, inputs);
    if (Status s = ws.Connect(); !s.ok()) {
      std::fprintf(stderr, "ws connect: %s\n", s.ToString().c_str());
      return 1;
    }
    std::vector<Transport*> modes = {&inproc, &http, &ws};

    if (batch == 16 || config.smoke) {
      // Added latency of one call: sequential forwards, one client, nothing else running.
      std::map<std::string, double> p50;
      for (Transport* t : modes) p50[t->name()] = SequentialP50(*t, config.latency_calls);
      latency = {{"batch", batch},
                 {"calls", config.latency_calls},
                 {"p50_ms", p50},
                 {"added_p50_ms_http", p50["http"] - p50["inproc"]},
                 {"added_p50_ms_ws", p50["ws"] - p50["inproc"]}};
    }

    for (Op op : {Op::kForward, Op::kForwardBackward}) {
      if (!(op == Op::kForward ? config.forward : config.forward_backward)) continue;
      for (int clients : config.clients) {
        std::map<std::string, CellResult> results;
        for (int round = 0; round < config.rounds; ++round) {
          for (Transport* t : modes) {
            CellResult& r = results[t->name()];
            r.mode = t->name();
            if (!r.error.empty()) continue;
            RunSlice(*t, op, clients, config.warmup, config.seconds / config.rounds, &r);
          }
        }
        const double inproc_rate = results["inproc"].samples_per_s(batch);
        const int64_t rss = MemoryOf(server->pid())["VmRSS"];
        for (Transport* t : modes) {
          const CellResult& r = results[t->name()];
          const double rate = r.samples_per_s(batch);
          const double p50 = Percentile(r.latencies_ms, 0.5);
          const double p90 = Percentile(r.latencies_ms, 0.9);
          std::string vs =
              r.mode == "inproc" || inproc_rate <= 0 ? "" : Fixed(rate / inproc_rate, 3);
          std::printf("%-17s %6lld %7d %7s %12.0f %8.2f %8.2f %7.1f %7s%s%s\n", OpName(op),
                      static_cast<long long>(batch), clients, r.mode.c_str(), rate, p50, p90,
                      r.mean_batch(), vs.c_str(),
                      r.error.empty() ? "" : "  ERROR: ", r.error.c_str());
          if (!r.error.empty() || r.completed == 0) failed = true;
          cells.push_back({{"op", OpName(op)},
                           {"batch", batch},
                           {"clients", clients},
                           {"mode", r.mode},
                           {"samples_per_s", rate},
                           {"iterations", r.completed},
                           {"window_s", r.window_s},
                           {"p50_ms", p50},
                           {"p90_ms", p90},
                           {"runtime_batches", r.batches.batches},
                           {"mean_batch_samples", r.mean_batch()},
                           {"server_rss_bytes_after", rss},
                           {"error", r.error}});
        }
        std::fflush(stdout);
        if (inproc_rate > 0) {
          ratios.push_back({{"op", OpName(op)},
                            {"batch", batch},
                            {"clients", clients},
                            {"http", results["http"].samples_per_s(batch) / inproc_rate},
                            {"ws", results["ws"].samples_per_s(batch) / inproc_rate}});
        }
      }
    }
  }

  // Peak memory of the server after every cell ran; weights + Adam's two moments, F32.
  std::map<std::string, int64_t> mem = MemoryOf(server->pid());
  const int64_t state_bytes = params * 4 * 3;
  const double rss_goal = 1.5 * static_cast<double>(state_bytes) + 200.0 * (1 << 20);
  const int status = server->Stop(SIGTERM, 60s);
  runtime->Stop();

  std::printf("\nremote / in-process samples/s:\n");
  std::printf("%-17s %6s %7s %7s %7s\n", "op", "batch", "clients", "http", "ws");
  for (const auto& r : ratios) {
    std::printf("%-17s %6lld %7d %7.3f %7.3f\n", r["op"].get<std::string>().c_str(),
                static_cast<long long>(r["batch"].get<int64_t>()), r["clients"].get<int>(),
                r["http"].get<double>(), r["ws"].get<double>());
  }
  if (!latency.empty()) {
    std::printf(
        "\nadded p50 latency of one forward at batch %lld (%d sequential calls): http %.3f ms, ws "
        "%.3f ms (in-process p50 %.3f ms; goal <= 0.5 ms)\n",
        static_cast<long long>(latency["batch"].get<int64_t>()), config.latency_calls,
        latency["added_p50_ms_http"].get<double>(), latency["added_p50_ms_ws"].get<double>(),
        latency["p50_ms"]["inproc"].get<double>());
  }
  std::printf(
      "server peak RSS (VmHWM) %.1f MiB, RSS at end %.1f MiB; weights+optimizer %.1f MiB "
      "(%lld params x 4 B x 3); goal <= %.1f MiB\n",
      static_cast<double>(mem["VmHWM"]) / (1 << 20), static_cast<double>(mem["VmRSS"]) / (1 << 20),
      static_cast<double>(state_bytes) / (1 << 20), static_cast<long long>(params),
      rss_goal / (1 << 20));
  std::printf("server exit status on SIGTERM: %d; load average at start %.2f, at end %.2f\n",
              status, load_at_start, LoadAverage());

  nlohmann::json out = {
      {"benchmark", "server"},
      {"smoke", config.smoke},
      {"config",
       {{"expert", "ffn"},
        {"hidden_dim", config.d},
        {"batches", config.batches},
        {"clients", config.clients},
        {"ops", config.forward && config.forward_backward
                    ? "both"
                    : (config.forward ? "forward" : "forward+backward")},
        {"window_s", config.seconds},
        {"warmup_s", config.warmup},
        {"rounds", config.rounds},
        {"server_args", config.server_args},
        {"load_average_start", load_at_start},
        {"load_average_end", LoadAverage()},
        {"compute_threads", threads},
        {"clients_share_cores_with_server", true},
        // Both change latency a lot on a small machine (OpenMP spin-waiting; a TCP_NODELAY shim
        // for experiments); recorded so that runs can be compared.
        {"env",
         {{"OMP_WAIT_POLICY", EnvOr("OMP_WAIT_POLICY", "")},
          {"LD_PRELOAD", EnvOr("LD_PRELOAD", "")}}}}},
      {"cells", cells},
      {"ratios", ratios},
      {"latency", latency},
      {"memory",
       {{"server_vmhwm_bytes", mem["VmHWM"]},
        {"server_vmrss_bytes", mem["VmRSS"]},
        {"params", params},
        {"weights_optimizer_bytes", state_bytes},
        {"goal_bytes", rss_goal}}},
      {"goals",
       {{"ratio_forward_backward_b256_8_16_clients", 0.95},
        {"ratio_forward_b256_8_16_clients", 0.97},
        {"added_p50_ms_b16", 0.5},
        {"rss", "1.5 x weights+optimizer + 200 MB"}}}};
  const bool written = dmoe::bench::Report("server", out);
  return failed || !written ? 1 : 0;
}
