// dmoe::testing::LinkRelay: a user-space link emulator for tests and scripts, standing in for
// `tc netem`, which these kernels lack. A relay listens on a loopback port and forwards what
// arrives there to a loopback target, adding one-way delay, jitter, loss, bandwidth limits,
// retransmission stalls and partitions on the way, in both directions.
//
//   auto relay = LinkRelay::Start(LinkProtocol::kTcp, "127.0.0.1:0", server_address,
//                                 {.delay = 20ms, .jitter = 5ms});
//   ASSERT_TRUE(relay.ok()) << relay.status().ToString();
//   client.Connect((*relay)->address());  // instead of server_address
//   (*relay)->SetPartitioned(true);       // the link goes dark; TCP bytes are held, not lost
//
// Scope. Only loopback (127.0.0.0/8) listen and target addresses are accepted, so a test can never
// send shaped traffic anywhere else. The relay runs on real time (steady_clock and Asio timers):
// it shapes real sockets, so there is no clock seam; tests assert lower bounds strictly (physics)
// and upper bounds with generous slack.
//
// TCP. Each accepted connection gets its own connection to the target. Bytes read from one side at
// time t are written to the other at t + delay (+ uniform jitter), paced by the bandwidth cap.
// Delivery times are made monotonic per direction, so jitter never reorders bytes. A stall (see
// LinkOptions) delays one chunk and, through that monotonic order, everything behind it. A
// half-close (FIN) is passed on after the bytes before it; a failing connect to the target closes
// the client's connection; a write error on either side closes both. At most 8 MiB wait in each
// direction of a connection; beyond that the relay stops reading, so the sender sees backpressure.
//
// UDP. One listening socket; each distinct client address gets its own socket connected to the
// target, so the target's replies arrive there and are relayed back to that client, shaped in that
// direction too. Jitter may reorder datagrams, as on a real network. At most 1024 client
// addresses are tracked: the least recently active one is evicted for a new one, and one idle for
// 60 s is forgotten. At most 8 MiB of datagrams wait in each direction; more are dropped.
//
// Partition. While partitioned, nothing is delivered in either direction. TCP behaves like a black
// hole whose retransmissions get through later: bytes already read are held (new ones are read
// until the backpressure bound), new connections are accepted but the target is connected only
// after the heal, and everything held is delivered, in order, once the partition heals. UDP
// datagrams, including ones already waiting out their delay, are dropped.
//
// Threads. A relay runs on its own thread. Every public method is thread-safe; SetOptions and
// SetPartitioned take effect for every write that starts after they return (a write already handed
// to the kernel still arrives).
#ifndef DMOE_TESTS_TESTING_LINK_RELAY_H_
#define DMOE_TESTS_TESTING_LINK_RELAY_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace dmoe::testing {

struct LinkOptions {
  // One-way delay, applied in each direction.
  std::chrono::microseconds delay{0};
  // Uniform +-jitter added to the delay of each TCP chunk or datagram (the sum is at least 0).
  std::chrono::microseconds jitter{0};
  // UDP: the fraction of datagrams dropped, in each direction; 0..1.
  double loss = 0;
  // TCP: per chunk read, the chance that its direction stalls for stall_duration, as while a lost
  // segment is retransmitted; 0..1.
  double tcp_stall_probability = 0;
  std::chrono::microseconds stall_duration{200'000};
  // Cap in bytes per second for each direction: of each TCP connection, or of the UDP relay as a
  // whole (shared by its clients); 0 = unlimited.
  uint64_t bandwidth_bytes_per_s = 0;
  // Seeds jitter, loss and stalls at Start (SetOptions ignores it); the same seed and the same
  // traffic give the same choices.
  uint64_t seed = 0;
};

enum class LinkProtocol { kTcp, kUdp };

// Counters since Start, over all connections or clients.
struct LinkStats {
  // Payload bytes and datagrams handed to the target (to_target) or the client (to_client).
  uint64_t bytes_to_target = 0;
  uint64_t bytes_to_client = 0;
  uint64_t datagrams_to_target = 0;
  uint64_t datagrams_to_client = 0;
  // UDP datagrams not delivered: loss, partition, a full queue or a failed send; both directions.
  uint64_t datagrams_dropped = 0;
  // TCP: connections accepted and open now. UDP: client addresses seen and tracked now.
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  // TCP: connects to the target that failed (the client's connection was closed).
  uint64_t connect_failures = 0;
};

class LinkRelay {
 public:
  // Binds `listen` ("127.0.0.1:0" picks a free port) and starts relaying to `target`
  // ("127.0.0.1:PORT"). kInvalidArgument for a malformed or non-loopback address, a target port
  // 0, or options out of range; kUnavailable when the listen address cannot be bound. The target
  // need not be up yet: TCP connects to it per accepted connection.
  static Result<std::unique_ptr<LinkRelay>> Start(LinkProtocol protocol, std::string listen,
                                                  std::string target, LinkOptions options);
  // Stops.
  ~LinkRelay();
  LinkRelay(const LinkRelay&) = delete;
  LinkRelay& operator=(const LinkRelay&) = delete;

  // "127.0.0.1:PORT" the relay listens on, with the port actually bound.
  std::string address() const;
  uint16_t port() const;
  LinkProtocol protocol() const;

  // Replaces the options for traffic read from now on; chunks and datagrams already waiting keep
  // their delivery times. kInvalidArgument (options unchanged) for values out of range.
  Status SetOptions(LinkOptions options);
  LinkOptions options() const;
  // Starts (true) or heals (false) a partition; see the header comment.
  void SetPartitioned(bool partitioned);
  bool partitioned() const;
  LinkStats stats() const;

  // Closes the listening socket and every connection (without delivering what waits) and joins
  // the relay's thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit LinkRelay(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_LINK_RELAY_H_
