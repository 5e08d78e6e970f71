#include "dht/sim_network.h"

#include <limits>

namespace dmoe::dht {

namespace {
constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
}  // namespace

struct SimNetwork::SimNode {
  class Endpoint final : public Transport {
   public:
    Endpoint(SimNetwork* net, size_t index) : net_(net), index_(index) {}
    void Send(const Address& to, std::span<const uint8_t> bytes) override {
      net_->Send(index_, to, bytes);
    }

   private:
    SimNetwork* net_;
    size_t index_;
  };

  SimNode(SimNetwork* net, size_t index) : endpoint(net, index) {}

  Endpoint endpoint;
  Address address;
  std::unique_ptr<Node> node;
  Handler handler;
  bool alive = true;
  int group = 0;
  int64_t scheduled_us = kNever;
};

SimNetwork::SimNetwork(uint64_t seed, int64_t start_unix_ms) : clock_(start_unix_ms), rng_(seed) {}

SimNetwork::~SimNetwork() = default;

Address SimNetwork::NextAddress() {
  // Each host in its own /24, like strangers on the internet (the Sybil placement limits count
  // per /24).
  uint32_t h = next_host_++;
  return Address::V4(10, static_cast<uint8_t>(h >> 8), static_cast<uint8_t>(h), 1, 4000);
}

size_t SimNetwork::AddNode(NodeOptions options) {
  std::array<uint8_t, 32> seed;
  for (auto& b : seed) b = static_cast<uint8_t>(rng_());
  return AddNode(Identity::FromSeed(seed), std::move(options));
}

size_t SimNetwork::AddNode(const Identity& identity, NodeOptions options) {
  size_t index = nodes_.size();
  auto sim = std::make_unique<SimNode>(this, index);
  sim->address = NextAddress();
  if (options.seed == 0) options.seed = rng_() | 1;
  sim->node = std::make_unique<Node>(identity, sim->endpoint, clock_, std::move(options));
  by_address_[sim->address] = index;
  nodes_.push_back(std::move(sim));
  Schedule(index);
  return index;
}

size_t SimNetwork::AddNodeAt(const Identity& identity, NodeOptions options, const Address& at,
                             Handler intercept) {
  size_t index = nodes_.size();
  auto sim = std::make_unique<SimNode>(this, index);
  sim->address = at;
  sim->handler = std::move(intercept);
  if (options.seed == 0) options.seed = rng_() | 1;
  sim->node = std::make_unique<Node>(identity, sim->endpoint, clock_, std::move(options));
  by_address_[sim->address] = index;
  nodes_.push_back(std::move(sim));
  Schedule(index);
  return index;
}

size_t SimNetwork::AddEndpoint(Handler handler) {
  size_t index = nodes_.size();
  auto sim = std::make_unique<SimNode>(this, index);
  sim->address = NextAddress();
  sim->handler = std::move(handler);
  by_address_[sim->address] = index;
  nodes_.push_back(std::move(sim));
  return index;
}

Address SimNetwork::AddForwardingAddress(size_t index) {
  Address forward = NextAddress();
  by_address_[forward] = index;
  return forward;
}

bool SimNetwork::alive(size_t index) const { return nodes_[index]->alive; }
Node& SimNetwork::node(size_t index) { return *nodes_[index]->node; }
const Address& SimNetwork::address(size_t index) const { return nodes_[index]->address; }
void SimNetwork::SetGroup(size_t index, int group) { nodes_[index]->group = group; }

Transport& SimNetwork::TransportOf(size_t index) { return nodes_[index]->endpoint; }

void SimNetwork::Remove(size_t index) {
  SimNode& n = *nodes_[index];
  n.alive = false;
  n.scheduled_us = kNever;
  by_address_.erase(n.address);
}

void SimNetwork::Send(size_t from, const Address& to, std::span<const uint8_t> bytes) {
  SimNode& src = *nodes_[from];
  if (!src.alive) return;
  Address source = src.address;
  if (auto flow = flows_.find({from, to}); flow != flows_.end()) source = flow->second;
  auto it = by_address_.find(to);
  if (it == by_address_.end() || nodes_[it->second]->group != src.group) {
    ++dropped_;
    return;
  }
  if (to != nodes_[it->second]->address) flows_[{it->second, source}] = to;
  if (link_.loss > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < link_.loss) {
    ++dropped_;
    return;
  }
  int64_t delay = link_.delay_us;
  if (link_.jitter_us > 0) {
    delay += std::uniform_int_distribution<int64_t>(-link_.jitter_us, link_.jitter_us)(rng_);
  }
  delay = std::max<int64_t>(delay, 0);
  events_.push(Event{clock_.NowMonotonicUs() + delay, seq_++, it->second, false, source,
                     std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size())});
}

void SimNetwork::Schedule(size_t index) {
  SimNode& n = *nodes_[index];
  if (!n.alive || !n.node) return;
  int64_t when = std::max(n.node->NextWakeupUs(), clock_.NowMonotonicUs());
  if (when < n.scheduled_us) {
    n.scheduled_us = when;
    events_.push(Event{when, seq_++, index, true, Address{}, {}});
  }
}

void SimNetwork::ScheduleAll() {
  for (size_t i = 0; i < nodes_.size(); ++i) Schedule(i);
}

bool SimNetwork::Step(int64_t limit_us) {
  while (!events_.empty()) {
    if (events_.top().at_us > limit_us) return false;
    Event e = events_.top();
    events_.pop();
    SimNode& n = *nodes_[e.target];
    if (!n.alive) continue;
    if (e.tick && e.at_us != n.scheduled_us) continue;  // superseded
    int64_t now = clock_.NowMonotonicUs();
    if (e.at_us > now) clock_.AdvanceUs(e.at_us - now);
    if (e.tick) {
      n.scheduled_us = kNever;
      n.node->Tick();
    } else {
      ++delivered_;
      auto data = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(e.bytes.data()),
                                           e.bytes.size());
      if (n.handler) {
        n.handler(e.from, data);
      } else if (n.node) {
        n.node->OnDatagram(e.from, data);
      }
    }
    Schedule(e.target);
    return true;
  }
  return false;
}

void SimNetwork::RunFor(int64_t ms) {
  ScheduleAll();
  int64_t end = clock_.NowMonotonicUs() + ms * 1000;
  while (Step(end)) {
  }
  int64_t now = clock_.NowMonotonicUs();
  if (end > now) clock_.AdvanceUs(end - now);
}

bool SimNetwork::RunUntil(const std::function<bool()>& done, int64_t max_ms) {
  ScheduleAll();
  int64_t end = clock_.NowMonotonicUs() + max_ms * 1000;
  while (!done()) {
    if (!Step(end)) {
      int64_t now = clock_.NowMonotonicUs();
      if (end > now) clock_.AdvanceUs(end - now);
      return done();
    }
  }
  return true;
}

}  // namespace dmoe::dht
