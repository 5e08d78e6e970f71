// LoopbackDhtOptions: the options of a DHT node for an in-process test, on the real clock and a
// free loopback UDP port. Header-only, so that only tests that start a DHT node link the DHT.
#ifndef DMOE_TESTS_TESTING_LOOPBACK_DHT_H_
#define DMOE_TESTS_TESTING_LOOPBACK_DHT_H_

#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"

namespace dmoe::testing {

// A DHT node on a free loopback UDP port, joining through `bootstrap` (none: alone).
inline dht::DhtOptions LoopbackDhtOptions(std::vector<std::string> bootstrap = {}) {
  dht::DhtOptions options;
  options.clock = &RealClock::Instance();
  options.listen = "127.0.0.1:0";
  options.bootstrap = std::move(bootstrap);
  return options;
}

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_LOOPBACK_DHT_H_
