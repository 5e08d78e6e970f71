// Helpers shared by the DHT tests: deterministic identities and simulated networks.
#ifndef DMOE_TESTS_DHT_TEST_UTIL_H_
#define DMOE_TESTS_DHT_TEST_UTIL_H_

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dht/node.h"
#include "dht/sim_network.h"

namespace dmoe::dht::testing {

inline Identity TestIdentity(uint8_t n) {
  std::array<uint8_t, 32> seed{};
  seed[0] = n;
  seed[1] = 0x5a;
  return Identity::FromSeed(seed);
}

// Options of a node on a simulated network of its own ("sim"), all limits at their defaults.
inline NodeOptions SimOptions() {
  NodeOptions o;
  o.network = "sim";
  return o;
}

// The bytes of `s`, for the decoders.
inline std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Builds `n` nodes; node 0 starts alone and each later node bootstraps from a random earlier one.
// Returns the indices.
inline std::vector<size_t> BuildNetwork(SimNetwork& net, size_t n, const NodeOptions& options,
                                        uint64_t seed = 7) {
  std::mt19937_64 rng(seed);
  std::vector<size_t> ids;
  for (size_t i = 0; i < n; ++i) {
    size_t idx = net.AddNode(options);
    if (!ids.empty()) {
      size_t seed_idx = ids[rng() % ids.size()];
      net.node(idx).Bootstrap({net.address(seed_idx)}, nullptr);
    }
    ids.push_back(idx);
    if (i % 16 == 15) net.RunFor(200);
  }
  net.RunFor(5000);
  return ids;
}

// Runs a blocking get on the simulated network.
inline KeyResult SimGet(SimNetwork& net, size_t index, const std::string& key,
                        int64_t timeout_ms = 5000) {
  std::optional<KeyResult> result;
  net.node(index).GetMany({key}, timeout_ms,
                          [&](std::vector<KeyResult> r) { result = std::move(r.front()); });
  net.RunUntil([&] { return result.has_value(); }, timeout_ms + 1000);
  if (!result) {
    KeyResult r;
    r.key = key;
    r.status = InternalError("get callback never ran");
    return r;
  }
  return *result;
}

inline Result<int> SimPut(SimNetwork& net, size_t index, const std::string& key,
                          const std::string& subkey, const std::string& value,
                          int64_t ttl_ms = 60'000) {
  std::optional<Result<int>> result;
  net.node(index).Put(key, subkey, value, ttl_ms, [&](Result<int> r) { result = std::move(r); });
  net.RunUntil([&] { return result.has_value(); }, 10'000);
  if (!result) return InternalError("put callback never ran");
  return *result;
}

}  // namespace dmoe::dht::testing

#endif  // DMOE_TESTS_DHT_TEST_UTIL_H_
