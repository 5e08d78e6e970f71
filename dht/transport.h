// The one seam between the DHT protocol core and the network. Two implementations: UdpTransport in
// dht/dht.cc (the Dht on real UDP) and SimNetwork's per-node endpoints (dht/sim_network.h).
#ifndef DMOE_DHT_TRANSPORT_H_
#define DMOE_DHT_TRANSPORT_H_

#include <cstdint>
#include <span>

#include "dht/address.h"

namespace dmoe::dht {

class Transport {
 public:
  virtual ~Transport() = default;
  // Sends one datagram, best effort (UDP semantics: it may be lost, and errors are not reported).
  // Never blocks; called only from the thread that drives the Node.
  virtual void Send(const Address& to, std::span<const uint8_t> bytes) = 0;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_TRANSPORT_H_
