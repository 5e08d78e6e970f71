// What every benchmark in bench/ shares: its flags (`--smoke` and options that take a value),
// percentiles, the JSON result file, and reading figures off the lines a child program prints.
// Child programs themselves start through dmoe::processes (tests/testing/processes.h).
//
//   bool smoke = false;
//   int64_t gets = 200;
//   if (!bench::ParseFlags(argc, argv, "[--smoke] [--gets N]",
//                          {{"--gets", bench::Int64Flag(&gets)}}, &smoke)) {
//     return 2;
//   }
//   ...
//   return bench::Report("dht", report) ? 0 : 1;  // writes dht.json, prints "wrote PATH"
//
// Results go to ${DMOE_BENCH_OUT:-bench/results}/NAME.json (scripts/bench sets DMOE_BENCH_OUT);
// scripts/bench and docs/benchmarks.md read the fields each benchmark writes there. Functions here
// are for a benchmark's main thread; Percentile and After are pure and safe anywhere.
#ifndef DMOE_BENCH_HARNESS_H_
#define DMOE_BENCH_HARNESS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"

namespace dmoe::bench {

// An option that takes a value, `--name VALUE`: `set` stores it and returns false when the value
// is not acceptable.
struct ValueFlag {
  std::string name;
  std::function<bool(const std::string&)> set;
};

// Setters for ValueFlag: the whole value must parse.
std::function<bool(const std::string&)> Int64Flag(int64_t* out);
std::function<bool(const std::string&)> IntFlag(int* out);
std::function<bool(const std::string&)> DoubleFlag(double* out);
std::function<bool(const std::string&)> StringFlag(std::string* out);

// Reads argv in order: `--smoke` sets *smoke and calls `on_smoke` (when given) right there, so
// that flags after it override what it presets; `value_flags` take their values. For anything
// else, a missing value or a refused one, prints "usage: PROGRAM `usage`" to stderr and returns
// false (the benchmark then exits 2).
bool ParseFlags(int argc, char** argv, const std::string& usage,
                const std::vector<ValueFlag>& value_flags, bool* smoke,
                const std::function<void()>& on_smoke = {});

// The `q` quantile (0 < q <= 1) of `values` by nearest rank: the smallest value with at least
// q * N values at or below it; 0 for no values.
double Percentile(std::vector<double> values, double q);

// Writes `report` (indented by 2, newline-terminated) to
// ${DMOE_BENCH_OUT:-bench/results}/NAME.json, creating the directory, and returns the file's path;
// kUnavailable naming the path when it cannot be written.
Result<std::string> WriteResult(const std::string& name, const nlohmann::json& report);

// WriteResult, then "wrote PATH" on stdout; on failure "NAME: cannot write PATH" on stderr and
// false.
bool Report(const std::string& name, const nlohmann::json& report);

// The word after the first `prefix` in `line` ("step 10/20 loss 0.5" and "loss " -> "0.5"); ""
// when `prefix` is absent.
std::string After(const std::string& line, const std::string& prefix);

// Seconds since `since` on the steady clock.
double Seconds(std::chrono::steady_clock::time_point since);

}  // namespace dmoe::bench

#endif  // DMOE_BENCH_HARNESS_H_
