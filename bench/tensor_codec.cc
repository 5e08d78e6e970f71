// tensor_codec: safetensors encode and decode throughput for one F32 tensor of 1 MiB and 64 MiB,
// against a plain memcpy of the same bytes in the same run.
//
// Two memcpy baselines: into a buffer allocated and touched beforehand ("memcpy", the best case and
// the reference for the ratios), and into a fresh allocation each time ("memcpy new"), which pays
// the page faults of new memory as Encode does when it returns a new blob. "encode into" reuses one
// buffer (EncodeInto). Decode is zero-copy: it parses the header and checks coverage, so its GB/s
// (blob bytes / time) far exceeds memcpy's. The goal is decode >= 0.8x memcpy. Timings are medians.
//
// Usage: tensor_codec [--smoke]. Writes ${DMOE_BENCH_OUT:-bench/results}/tensor_codec.json.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/harness.h"
#include "tensor/safetensors.h"

namespace {

namespace st = dmoe::safetensors;
using Clock = std::chrono::steady_clock;

// Keeps the compiler from dropping work whose result is otherwise unused.
template <typename T>
void KeepAlive(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

// Runs `body` `iterations` times and returns the median seconds per run.
template <typename F>
double MedianSeconds(int iterations, F&& body) {
  std::vector<double> seconds;
  seconds.reserve(iterations);
  for (int i = 0; i < iterations; ++i) {
    const Clock::time_point start = Clock::now();
    body();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + iterations / 2, seconds.end());
  return seconds[iterations / 2];
}

struct Row {
  size_t tensor_bytes = 0;
  size_t blob_bytes = 0;
  int iterations = 0;
  double memcpy_gbps = 0;
  double memcpy_new_gbps = 0;
  double encode_gbps = 0;
  double encode_into_gbps = 0;
  double decode_gbps = 0;
};

Row Measure(size_t tensor_bytes, int iterations) {
  const size_t count = tensor_bytes / sizeof(float);
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(i % 1000) * 0.5f;
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(values.data()),
                                       tensor_bytes);
  const std::vector<st::TensorRef> tensors = {
      {"x", st::DType::kF32, {static_cast<int64_t>(count)}, bytes}};

  Row row;
  row.tensor_bytes = tensor_bytes;
  row.iterations = iterations;

  std::vector<uint8_t> destination(tensor_bytes, 1);
  const double memcpy_s = MedianSeconds(iterations, [&] {
    std::memcpy(destination.data(), bytes.data(), tensor_bytes);
    KeepAlive(destination.data());
  });

  const double memcpy_new_s = MedianSeconds(iterations, [&] {
    std::unique_ptr<uint8_t[]> fresh(new uint8_t[tensor_bytes]);
    std::memcpy(fresh.get(), bytes.data(), tensor_bytes);
    KeepAlive(fresh.get());
  });

  const double encode_s = MedianSeconds(iterations, [&] {
    dmoe::Result<std::vector<uint8_t>> blob = st::Encode(tensors, {{"uid", "ffn.0"}});
    if (!blob.ok()) std::abort();
    KeepAlive(blob->data());
  });

  std::vector<uint8_t> reused;
  const double encode_into_s = MedianSeconds(iterations, [&] {
    if (!st::EncodeInto(tensors, {{"uid", "ffn.0"}}, &reused).ok()) std::abort();
    KeepAlive(reused.data());
  });

  dmoe::Result<std::vector<uint8_t>> blob = st::Encode(tensors, {{"uid", "ffn.0"}});
  if (!blob.ok()) std::abort();
  row.blob_bytes = blob->size();
  const double decode_s = MedianSeconds(iterations, [&] {
    dmoe::Result<st::Decoded> decoded = st::Decode(*blob);
    if (!decoded.ok() || decoded->tensors[0].data.size() != tensor_bytes) std::abort();
    KeepAlive(decoded->tensors[0].data.data());
  });

  row.memcpy_gbps = tensor_bytes / memcpy_s / 1e9;
  row.memcpy_new_gbps = tensor_bytes / memcpy_new_s / 1e9;
  row.encode_gbps = tensor_bytes / encode_s / 1e9;
  row.encode_into_gbps = tensor_bytes / encode_into_s / 1e9;
  row.decode_gbps = row.blob_bytes / decode_s / 1e9;
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  if (!dmoe::bench::ParseFlags(argc, argv, "[--smoke]", {}, &smoke)) return 2;

  constexpr size_t kMiB = size_t{1} << 20;
  std::vector<Row> rows = {Measure(1 * kMiB, smoke ? 3 : 301), Measure(64 * kMiB, smoke ? 3 : 31)};

  std::printf("tensor_codec%s: one F32 tensor, median GB/s (1 GB = 1e9 bytes)\n",
              smoke ? " (smoke: too few iterations to trust)" : "");
  std::printf("%8s %6s %8s %10s %8s %11s %10s %8s %8s\n", "size", "iters", "memcpy", "memcpy new",
              "encode", "encode into", "decode", "enc/mem", "dec/mem");
  bool goal_met = true;
  nlohmann::json results = nlohmann::json::array();
  for (const Row& r : rows) {
    const double encode_ratio = r.encode_gbps / r.memcpy_gbps;
    const double decode_ratio = r.decode_gbps / r.memcpy_gbps;
    goal_met = goal_met && decode_ratio >= 0.8;
    std::printf("%4zu MiB %6d %8.2f %10.2f %8.2f %11.2f %10.1f %8.2f %8.1f\n",
                r.tensor_bytes / kMiB, r.iterations, r.memcpy_gbps, r.memcpy_new_gbps,
                r.encode_gbps, r.encode_into_gbps, r.decode_gbps, encode_ratio, decode_ratio);
    results.push_back({{"tensor_bytes", r.tensor_bytes},
                       {"blob_bytes", r.blob_bytes},
                       {"iterations", r.iterations},
                       {"memcpy_gbps", r.memcpy_gbps},
                       {"memcpy_new_buffer_gbps", r.memcpy_new_gbps},
                       {"encode_gbps", r.encode_gbps},
                       {"encode_into_gbps", r.encode_into_gbps},
                       {"decode_gbps", r.decode_gbps},
                       {"encode_vs_memcpy", encode_ratio},
                       {"decode_vs_memcpy", decode_ratio}});
  }
  std::printf("goal decode >= 0.8x memcpy: %s\n", goal_met ? "met" : "NOT met");

  const nlohmann::json report = {{"benchmark", "tensor_codec"},
                                 {"smoke", smoke},
                                 {"unit", "GB/s (1e9 bytes per second), median"},
                                 {"goal", "decode >= 0.8x memcpy"},
                                 {"goal_met", goal_met},
                                 {"results", results}};
  return dmoe::bench::Report("tensor_codec", report) ? 0 : 1;
}
