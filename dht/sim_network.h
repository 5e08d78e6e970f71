// A simulated datagram network on virtual time, for tests and benchmarks: hundreds of Nodes in one
// thread, with configurable delay, jitter, loss and partitions. Time is a FakeClock that the
// network advances from event to event, so a run of minutes of virtual time takes as long as its
// messages take to process. Not thread-safe; everything runs on the caller's thread.
#ifndef DMOE_DHT_SIM_NETWORK_H_
#define DMOE_DHT_SIM_NETWORK_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "core/clock.h"
#include "dht/node.h"
#include "dht/transport.h"

namespace dmoe::dht {

struct LinkModel {
  int64_t delay_us = 0;   // one-way
  int64_t jitter_us = 0;  // uniform in [-jitter, +jitter], never below zero in total
  double loss = 0;        // probability a datagram is dropped
};

class SimNetwork {
 public:
  using Handler = std::function<void(const Address& from, std::span<const uint8_t> bytes)>;

  explicit SimNetwork(uint64_t seed = 1, int64_t start_unix_ms = 1'700'000'000'000);
  ~SimNetwork();

  FakeClock& clock() { return clock_; }
  void set_link(LinkModel link) { link_ = link; }
  const LinkModel& link() const { return link_; }

  // Adds a Node at a fresh address; returns its index. The identity comes from the network's rng.
  size_t AddNode(NodeOptions options);
  size_t AddNode(const Identity& identity, NodeOptions options);
  // A Node at a chosen address (distinct from every other), for tests that place nodes in
  // subnets. With `intercept`, the node's datagrams go to `intercept` instead, which may pass
  // them on to node(index).OnDatagram (a rogue built from a Node, tests/hostile/rogue_dht.h).
  size_t AddNodeAt(const Identity& identity, NodeOptions options, const Address& at,
                   Handler intercept = nullptr);
  // An endpoint that is not a Node (a hand-written attacker, a raw prober); `handler` gets its
  // datagrams, and Send from `TransportOf(index)` sends from it.
  size_t AddEndpoint(Handler handler);
  // A second address for node `index`, like a router's port forward in front of it: datagrams to
  // it reach the node with their source unchanged, and the node's datagrams to a peer that wrote
  // to it leave from it (the router's connection tracking). Its other datagrams leave from its own
  // address, which stays reachable too. `index` may be size(), the node added next, so that the
  // address can go into that node's options.
  Address AddForwardingAddress(size_t index);
  // Takes a node off the network: datagrams to it vanish and its timers stop. Its index stays
  // valid.
  void Remove(size_t index);
  bool alive(size_t index) const;

  Node& node(size_t index);
  const Address& address(size_t index) const;
  Transport& TransportOf(size_t index);
  size_t size() const { return nodes_.size(); }

  // Datagrams between different partition groups are dropped (all nodes start in group 0).
  void SetGroup(size_t index, int group);

  // Processes events until virtual time reaches now + ms.
  void RunFor(int64_t ms);
  // Processes events until `done()` holds (checked after each event) or `max_ms` of virtual time
  // passes; returns done().
  bool RunUntil(const std::function<bool()>& done, int64_t max_ms);

  uint64_t delivered() const { return delivered_; }
  uint64_t dropped() const { return dropped_; }

 private:
  struct SimNode;
  struct Event {
    int64_t at_us;
    uint64_t seq;
    size_t target;
    bool tick;
    Address from;
    std::string bytes;
    bool operator>(const Event& o) const {
      return at_us != o.at_us ? at_us > o.at_us : seq > o.seq;
    }
  };

  void Send(size_t from, const Address& to, std::span<const uint8_t> bytes);
  void Schedule(size_t index);
  void ScheduleAll();
  bool Step(int64_t limit_us);
  Address NextAddress();

  FakeClock clock_;
  std::mt19937_64 rng_;
  LinkModel link_;
  std::vector<std::unique_ptr<SimNode>> nodes_;
  std::map<Address, size_t> by_address_;
  // (node, peer) -> the forwarding address the peer wrote to, which the node's answers leave from.
  std::map<std::pair<size_t, Address>, Address> flows_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  uint64_t seq_ = 0;
  uint64_t delivered_ = 0;
  uint64_t dropped_ = 0;
  uint32_t next_host_ = 1;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_SIM_NETWORK_H_
