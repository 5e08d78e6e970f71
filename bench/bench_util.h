// Small helpers the benchmarks that drive real processes share: which binary to run, a figure read
// off a printed line, elapsed seconds. Header-only; a bench includes it from bench/.
#ifndef DMOE_BENCH_BENCH_UTIL_H_
#define DMOE_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <cstdlib>
#include <string>

namespace dmoe::bench {

// The binary named by environment variable `env` when set, else the one the build made.
inline std::string Binary(const char* env, const char* built) {
  if (const char* v = std::getenv(env)) return v;
  return built;
}

// The word after the first `prefix` in `line` ("step 10/20 loss 0.5" and "loss " -> "0.5"); "" when
// `prefix` is absent.
inline std::string After(const std::string& line, const std::string& prefix) {
  const size_t at = line.find(prefix);
  if (at == std::string::npos) return "";
  std::string rest = line.substr(at + prefix.size());
  return rest.substr(0, rest.find(' '));
}

inline double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace dmoe::bench

#endif  // DMOE_BENCH_BENCH_UTIL_H_
