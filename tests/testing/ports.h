// Loopback ports for tests and benchmarks that must know a port before the process that binds it
// starts (a relay in front of a server, a server restarted on the same address).
#ifndef DMOE_TESTS_TESTING_PORTS_H_
#define DMOE_TESTS_TESTING_PORTS_H_

#include <cstdint>

namespace dmoe::testing {

enum class PortKind { kTcp, kUdp };

// A 127.0.0.1 port of `kind` that was free a moment ago (bound to port 0, read, released); 0 when
// no socket could be bound. Another process may take it in between: callers bind it at once.
uint16_t FreeLoopbackPort(PortKind kind);

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_PORTS_H_
