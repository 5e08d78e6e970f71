// Dht on real UDP: the Node core on an Asio strand with one socket and two timers (see dht/dht.h).
#include <utility>  // before Asio, which misses it under C++20

#include <boost/asio.hpp>

#include <spdlog/spdlog.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/host_port.h"
#include "dht/address.h"
#include "dht/dht.h"
#include "dht/node.h"
#include "dht/persistence.h"
#include "dht/transport.h"
#include "storage/kv_store.h"

namespace dmoe::dht {
namespace {

namespace asio = boost::asio;
using udp = asio::ip::udp;

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

Address FromEndpoint(const udp::endpoint& ep) {
  Address a;
  asio::ip::address ip = ep.address();
  if (ip.is_v6() && ip.to_v6().is_v4_mapped()) {
    ip = asio::ip::make_address_v4(asio::ip::v4_mapped, ip.to_v6());
  }
  if (ip.is_v4()) {
    auto b = ip.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), a.ip.begin());
  } else {
    a.v6 = true;
    auto b = ip.to_v6().to_bytes();
    std::copy(b.begin(), b.end(), a.ip.begin());
  }
  a.port = ep.port();
  return a;
}

udp::endpoint ToEndpoint(const Address& a) {
  if (a.v6) {
    asio::ip::address_v6::bytes_type b;
    std::copy(a.ip.begin(), a.ip.end(), b.begin());
    return udp::endpoint(asio::ip::address_v6(b), a.port);
  }
  asio::ip::address_v4::bytes_type b;
  std::copy(a.ip.begin(), a.ip.begin() + 4, b.begin());
  return udp::endpoint(asio::ip::address_v4(b), a.port);
}

// "host:port", "[v6]:port"; the host may be a name. Resolved once, here at the edge.
Result<std::vector<udp::endpoint>> Resolve(asio::io_context& io, const std::string& text,
                                           PortRule rule = PortRule::kAnyPort) {
  DMOE_ASSIGN_OR_RETURN(HostPort host_port, ParseHostPort(text, rule));
  const std::string& host = host_port.host;
  const std::string port = std::to_string(host_port.port);
  boost::system::error_code ec;
  udp::resolver resolver(io);
  auto results = resolver.resolve(host, port, udp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return InvalidArgumentError("cannot resolve '" + text + "': " + ec.message());
  }
  std::vector<udp::endpoint> out;
  for (const auto& r : results) out.push_back(r.endpoint());
  return out;
}

class UdpTransport final : public Transport {
 public:
  explicit UdpTransport(udp::socket& socket) : socket_(socket) {}
  void Send(const Address& to, std::span<const uint8_t> bytes) override {
    boost::system::error_code ec;
    udp::endpoint ep = ToEndpoint(to);
    if (socket_.local_endpoint(ec).protocol() == udp::v6() && ep.address().is_v4()) {
      ep = udp::endpoint(asio::ip::make_address_v6(asio::ip::v4_mapped, ep.address().to_v4()),
                         ep.port());
    }
    // UDP send on a non-blocking-in-practice socket; a failure is a lost datagram, as on the wire.
    socket_.send_to(asio::buffer(bytes.data(), bytes.size()), ep, 0, ec);
    if (ec) SPDLOG_DEBUG("dht: send to {} failed: {}", to.ToString(), ec.message());
  }

 private:
  udp::socket& socket_;
};

// The shared state behind a Dht. Every asynchronous handler holds a reference, so the state
// outlives the front object until the io_context has dropped the last handler (matters with an
// external io_context).
class DhtImpl final : public Dht, public std::enable_shared_from_this<DhtImpl> {
 public:
  explicit DhtImpl(DhtOptions options)
      : options_(std::move(options)),
        own_io_(options_.io_context == nullptr ? std::make_unique<asio::io_context>() : nullptr),
        io_(options_.io_context != nullptr ? *options_.io_context : *own_io_),
        strand_(asio::make_strand(io_)),
        socket_(strand_),
        timer_(strand_),
        save_timer_(strand_),
        transport_(socket_) {}

  ~DhtImpl() override { Stop(); }

  Status Init() {
    if (options_.clock == nullptr) {
      return InvalidArgumentError("DhtOptions::clock is not set: the process passes its clock");
    }
    if (!options_.identity) options_.identity = Identity::Generate();
    DMOE_ASSIGN_OR_RETURN(auto listen, Resolve(io_, options_.listen));
    boost::system::error_code ec;
    udp::endpoint ep = listen.front();
    socket_.open(ep.protocol(), ec);
    if (!ec) socket_.bind(ep, ec);
    if (ec) {
      return UnavailableError("cannot bind UDP " + options_.listen + ": " + ec.message());
    }
    local_ = FromEndpoint(socket_.local_endpoint(ec));
    if (!options_.public_address.empty()) {
      auto announced = Resolve(io_, options_.public_address, PortRule::kNonZeroPort);
      if (!announced.ok()) {
        return InvalidArgumentError("public address: " + announced.status().message());
      }
      options_.node.public_address = FromEndpoint(announced->front());
    }
    if (!options_.kv_store && !options_.db_path.empty()) {
      std::error_code fs_ec;
      std::filesystem::create_directories(options_.db_path, fs_ec);
      if (fs_ec) {
        return UnavailableError("cannot create database directory " + options_.db_path + ": " +
                                fs_ec.message());
      }
      DMOE_ASSIGN_OR_RETURN(auto kv, storage::KvStore::Open(options_.db_path));
      options_.kv_store = std::shared_ptr<storage::KvStore>(std::move(kv));
    }
    node_ = std::make_unique<Node>(*options_.identity, transport_, *options_.clock, options_.node);
    std::vector<Address> seeds;
    for (const std::string& b : options_.bootstrap) {
      auto eps = Resolve(io_, b);
      if (!eps.ok()) return eps.status();
      seeds.push_back(FromEndpoint(eps->front()));
    }
    if (options_.kv_store) {
      auto state = LoadState(*options_.kv_store);
      if (!state.ok()) return state.status();
      SPDLOG_INFO("dht: loaded {} saved contacts and {} own records", state->contacts.size(),
                  state->own_records.size());
      node_->RestoreOwnRecords(state->own_records);
      for (const Address& a : state->contacts) {
        if (a != local_ && std::find(seeds.begin(), seeds.end(), a) == seeds.end()) {
          seeds.push_back(a);
        }
      }
    }
    auto promise = std::make_shared<std::promise<Status>>();
    bootstrapped_ = promise->get_future().share();
    asio::post(strand_, [this, self = shared_from_this(), seeds, promise] {
      if (seeds.empty()) {
        promise->set_value(Status::Ok());
      } else {
        node_->Bootstrap(seeds, [promise](Status s) { promise->set_value(s); });
      }
      Receive();
      Rearm();
      ArmSave();
    });
    if (own_io_) {
      work_.emplace(asio::make_work_guard(*own_io_));
      thread_ = std::thread([this] { own_io_->run(); });
    }
    started_ = true;
    return Status::Ok();
  }

  std::string local_address() const override { return local_.ToString(); }
  uint16_t port() const override { return local_.port; }
  std::string announced_address() const override {
    return options_.node.public_address ? options_.node.public_address->ToString()
                                        : local_.ToString();
  }
  std::string peer_id() const override { return options_.identity->peer_id(); }

  void GetMany(std::vector<std::string> keys, std::chrono::milliseconds timeout,
               std::function<void(std::vector<KeyResult>)> done) override {
    asio::post(strand_, [this, self = shared_from_this(), keys = std::move(keys), timeout,
                         done = std::move(done)]() mutable {
      if (stopped_) return;
      node_->GetMany(std::move(keys), timeout.count(), std::move(done));
      Rearm();
    });
  }

  void Put(std::string key, std::string subkey, std::string value, std::chrono::milliseconds ttl,
           std::function<void(Result<int>)> done) override {
    asio::post(strand_, [this, self = shared_from_this(), key = std::move(key),
                         subkey = std::move(subkey), value = std::move(value), ttl,
                         done = std::move(done)]() mutable {
      if (stopped_) return;
      node_->Put(std::move(key), std::move(subkey), std::move(value), ttl.count(), std::move(done));
      Rearm();
    });
  }

  Status WaitBootstrapped(std::chrono::milliseconds timeout) override {
    if (bootstrapped_.wait_for(timeout) != std::future_status::ready) {
      return DeadlineExceededError("DHT bootstrap did not finish within " +
                                   std::to_string(timeout.count()) + " ms");
    }
    return bootstrapped_.get();
  }

  std::vector<KeyResult> GetManyBlocking(std::vector<std::string> keys,
                                         std::chrono::milliseconds timeout) override {
    auto promise = std::make_shared<std::promise<std::vector<KeyResult>>>();
    auto future = promise->get_future();
    size_t n = keys.size();
    std::vector<std::string> copy = keys;
    GetMany(std::move(keys), timeout,
            [promise](std::vector<KeyResult> r) { promise->set_value(std::move(r)); });
    // The node answers by the deadline; the margin only covers a stopped node.
    if (future.wait_for(timeout + std::chrono::seconds(2)) != std::future_status::ready) {
      std::vector<KeyResult> out(n);
      for (size_t i = 0; i < n; ++i) {
        out[i].key = copy[i];
        out[i].status = UnavailableError("DHT node stopped before answering");
      }
      return out;
    }
    return future.get();
  }

  Result<int> PutBlocking(std::string key, std::string subkey, std::string value,
                          std::chrono::milliseconds ttl) override {
    auto promise = std::make_shared<std::promise<Result<int>>>();
    auto future = promise->get_future();
    Put(std::move(key), std::move(subkey), std::move(value), ttl,
        [promise](Result<int> r) { promise->set_value(std::move(r)); });
    // A store is a lookup plus one round of STOREs, each bounded by the RPC timeout.
    auto limit = std::chrono::milliseconds(options_.node.rpc_timeout_ms * 12 + 2000);
    if (future.wait_for(limit) != std::future_status::ready) {
      return DeadlineExceededError("DHT put did not finish within " +
                                   std::to_string(limit.count()) + " ms");
    }
    return future.get();
  }

  NodeStats Stats() override {
    return RunOnStrand<NodeStats>([this] { return node_->stats(); }, NodeStats{});
  }
  size_t RoutingTableSize() override {
    return RunOnStrand<size_t>([this] { return node_->routing_table().size(); }, 0);
  }

  void Stop() override {
    if (stop_called_.exchange(true)) return;
    if (!started_) return;
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    asio::post(strand_, [this, self = shared_from_this(), done] {
      stopped_ = true;
      Save();
      boost::system::error_code ec;
      socket_.close(ec);
      timer_.cancel();
      save_timer_.cancel();
      done->set_value();
    });
    if (own_io_) {
      future.wait();
      work_.reset();
      own_io_->stop();
      if (thread_.joinable()) thread_.join();
      // Drain the aborted handlers so they release their references to this object.
      own_io_->restart();
      own_io_->run();
    } else {
      // The caller runs the io_context; if it is not running any more, the post never runs and
      // there is nothing left to wait for.
      future.wait_for(std::chrono::seconds(5));
    }
  }

 private:
  template <typename T>
  T RunOnStrand(std::function<T()> fn, T fallback) {
    if (stopped_) return fallback;
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    asio::post(strand_, [self = shared_from_this(), fn, promise] { promise->set_value(fn()); });
    if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) return fallback;
    return future.get();
  }

  void Receive() {
    socket_.async_receive_from(
        asio::buffer(buffer_), sender_,
        [this, self = shared_from_this()](boost::system::error_code ec, size_t n) {
          if (stopped_ || ec == asio::error::operation_aborted) return;
          if (!ec) {
            node_->OnDatagram(FromEndpoint(sender_), std::span<const uint8_t>(buffer_.data(), n));
            Rearm();
          } else {
            SPDLOG_DEBUG("dht: receive error: {}", ec.message());
          }
          Receive();
        });
  }

  // Arms the timer for the node's next wakeup when that is earlier than what is armed.
  void Rearm() {
    if (stopped_) return;
    int64_t wake = node_->NextWakeupUs();
    if (wake >= armed_us_) return;
    armed_us_ = wake;
    int64_t delay = std::max<int64_t>(0, wake - options_.clock->NowMonotonicUs());
    timer_.expires_after(std::chrono::microseconds(delay));
    timer_.async_wait([this, self = shared_from_this(), wake](boost::system::error_code ec) {
      if (stopped_ || ec == asio::error::operation_aborted || wake != armed_us_) return;
      armed_us_ = kNever;
      node_->Tick();
      Rearm();
    });
  }

  void ArmSave() {
    if (!options_.kv_store || stopped_) return;
    save_timer_.expires_after(std::chrono::milliseconds(options_.save_interval_ms));
    save_timer_.async_wait([this, self = shared_from_this()](boost::system::error_code ec) {
      if (ec || stopped_) return;
      Save();
      ArmSave();
    });
  }

  // Runs on the strand. A small unsynced write: it reaches the OS page cache, not the disk.
  void Save() {
    if (!options_.kv_store || !node_) return;
    Status s = SaveState(*options_.kv_store, node_->Contacts(), node_->OwnRecords());
    if (!s.ok()) SPDLOG_WARN("dht: could not save node state: {}", s.ToString());
  }

  DhtOptions options_;
  std::unique_ptr<asio::io_context> own_io_;
  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  udp::socket socket_;
  asio::steady_timer timer_;
  asio::steady_timer save_timer_;
  UdpTransport transport_;
  std::unique_ptr<Node> node_;
  Address local_;
  std::array<uint8_t, 65536> buffer_{};
  udp::endpoint sender_;
  int64_t armed_us_ = kNever;
  std::shared_future<Status> bootstrapped_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> stop_called_{false};
  bool started_ = false;
};

// The object handed to users: stopping it stops the shared state.
class DhtFront final : public Dht {
 public:
  explicit DhtFront(std::shared_ptr<DhtImpl> impl) : impl_(std::move(impl)) {}
  ~DhtFront() override { impl_->Stop(); }
  std::string local_address() const override { return impl_->local_address(); }
  uint16_t port() const override { return impl_->port(); }
  std::string announced_address() const override { return impl_->announced_address(); }
  std::string peer_id() const override { return impl_->peer_id(); }
  void GetMany(std::vector<std::string> keys, std::chrono::milliseconds timeout,
               std::function<void(std::vector<KeyResult>)> done) override {
    impl_->GetMany(std::move(keys), timeout, std::move(done));
  }
  void Put(std::string key, std::string subkey, std::string value, std::chrono::milliseconds ttl,
           std::function<void(Result<int>)> done) override {
    impl_->Put(std::move(key), std::move(subkey), std::move(value), ttl, std::move(done));
  }
  Status WaitBootstrapped(std::chrono::milliseconds timeout) override {
    return impl_->WaitBootstrapped(timeout);
  }
  std::vector<KeyResult> GetManyBlocking(std::vector<std::string> keys,
                                         std::chrono::milliseconds timeout) override {
    return impl_->GetManyBlocking(std::move(keys), timeout);
  }
  Result<int> PutBlocking(std::string key, std::string subkey, std::string value,
                          std::chrono::milliseconds ttl) override {
    return impl_->PutBlocking(std::move(key), std::move(subkey), std::move(value), ttl);
  }
  NodeStats Stats() override { return impl_->Stats(); }
  size_t RoutingTableSize() override { return impl_->RoutingTableSize(); }
  void Stop() override { impl_->Stop(); }

 private:
  std::shared_ptr<DhtImpl> impl_;
};

}  // namespace

Result<std::unique_ptr<Dht>> Dht::Start(DhtOptions options) {
  auto impl = std::make_shared<DhtImpl>(std::move(options));
  DMOE_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Dht>(std::make_unique<DhtFront>(std::move(impl)));
}

}  // namespace dmoe::dht
