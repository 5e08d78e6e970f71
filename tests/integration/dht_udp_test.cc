// Real UDP: 16 dmoe-dht processes on loopback. Put through one, get through another, SIGKILL five,
// get again; then a node stopped with SIGTERM restarts from its database without a bootstrap
// address. No sleeps: every wait polls a pipe or a DHT call with a deadline; every process is
// killed and reaped in TearDown even when an assertion fails.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "tests/testing/processes.h"

namespace dmoe::dht {
namespace {

using namespace std::chrono_literals;

// A dmoe-dht child: its Process (SIGKILLed and reaped when destroyed), address and peer id.
using Proc = testing::DhtProcess;

// A UDP relay in front of one loopback port, as a port forward with connection tracking: a
// datagram from client X to the relay's port goes to the target from a socket of the relay's own
// for X, and what the target sends to that socket goes back to X from the relay's port. So the
// target sees its peers at the relay's sockets and they see it at the relay's port, never at its
// own. A thread polls the sockets until the relay is destroyed.
class UdpForwarder {
 public:
  UdpForwarder() {
    public_fd_ = BoundSocket();
    sockaddr_in addr{};
    socklen_t len = sizeof(addr);
    getsockname(public_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (pipe(stop_) != 0) stop_[0] = stop_[1] = -1;
  }
  ~UdpForwarder() {
    if (thread_.joinable()) {
      char byte = 0;
      (void)!write(stop_[1], &byte, 1);
      thread_.join();
    }
    for (int fd : {public_fd_, stop_[0], stop_[1]}) close(fd);
    for (const auto& [port, fd] : by_client_) close(fd);
  }

  uint16_t port() const { return port_; }
  // Starts relaying to 127.0.0.1:target_port.
  void Start(uint16_t target_port) {
    target_port_ = target_port;
    thread_ = std::thread([this] { Loop(); });
  }
  // Ports of the clients whose datagrams were relayed to the target.
  std::set<uint16_t> clients() {
    std::lock_guard<std::mutex> lock(mu_);
    return clients_;
  }
  // Datagrams relayed back from the target to `client_port`.
  int answers_to(uint16_t client_port) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = answers_.find(client_port);
    return it == answers_.end() ? 0 : it->second;
  }

 private:
  static int BoundSocket() {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    return fd;
  }
  static sockaddr_in Loopback(uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return addr;
  }

  void Loop() {
    char buf[65536];
    for (;;) {
      std::vector<pollfd> fds = {{stop_[0], POLLIN, 0}, {public_fd_, POLLIN, 0}};
      std::vector<uint16_t> owners = {0, 0};
      for (const auto& [client, fd] : by_client_) {
        fds.push_back({fd, POLLIN, 0});
        owners.push_back(client);
      }
      if (poll(fds.data(), fds.size(), -1) < 0) return;
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) {
        sockaddr_in from{};
        socklen_t len = sizeof(from);
        ssize_t n =
            recvfrom(public_fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
        if (n >= 0) {
          uint16_t client = ntohs(from.sin_port);
          auto [it, inserted] = by_client_.try_emplace(client, -1);
          if (inserted) it->second = BoundSocket();
          sockaddr_in to = Loopback(target_port_);
          sendto(it->second, buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&to),
                 sizeof(to));
          std::lock_guard<std::mutex> lock(mu_);
          clients_.insert(client);
        }
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        if (!(fds[i].revents & POLLIN)) continue;
        ssize_t n = recv(fds[i].fd, buf, sizeof(buf), 0);
        if (n < 0) continue;
        sockaddr_in to = Loopback(owners[i]);
        sendto(public_fd_, buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&to),
               sizeof(to));
        std::lock_guard<std::mutex> lock(mu_);
        ++answers_[owners[i]];
      }
    }
  }

  int public_fd_ = -1;
  int stop_[2] = {-1, -1};
  uint16_t port_ = 0;
  uint16_t target_port_ = 0;
  std::thread thread_;
  std::map<uint16_t, int> by_client_;  // the relay thread's alone
  std::mutex mu_;
  std::set<uint16_t> clients_;
  std::map<uint16_t, int> answers_;
};

uint16_t PortOf(const std::string& host_port) {
  return static_cast<uint16_t>(std::stoi(host_port.substr(host_port.rfind(':') + 1)));
}

class DhtUdpTest : public ::testing::Test {
 protected:
  void TearDown() override {
    procs_.clear();
    std::filesystem::remove_all(db_dir_);
  }

  // Sends `sig`, reaps the process and returns its wait status.
  static int Kill(Proc& p, int sig) {
    if (!p.process) return -1;
    return p.process->Stop(sig, 30s);
  }

  // Starts dmoe-dht and waits (poll with deadline) for its "listening on" line; the returned
  // reference stays valid until TearDown.
  Proc& Start(const std::vector<std::string>& extra) {
    std::vector<std::string> flags = {"--network", "itest"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    procs_.push_back(std::make_unique<Proc>());
    auto started = testing::StartDht(flags, 10s);
    EXPECT_TRUE(started.ok()) << started.status().ToString();
    if (started.ok()) *procs_.back() = std::move(started).value();
    return *procs_.back();
  }

  // A client node that joins through `via`, like `dmoe dht get/put`.
  std::unique_ptr<Dht> Client(const std::string& via) {
    DhtOptions o;
    o.clock = &RealClock::Instance();
    o.listen = "127.0.0.1:0";
    o.bootstrap = {via};
    o.node.network = "itest";
    o.node.client = true;
    o.node.join_refresh = false;
    auto d = Dht::Start(std::move(o));
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (!d.ok()) return nullptr;
    EXPECT_TRUE((*d)->WaitBootstrapped(5s).ok());
    return std::move(*d);
  }

  // Polls gets (each bounded by its own deadline) until the key is found or 10 s pass.
  KeyResult GetWithin(const std::string& via, const std::string& key) {
    KeyResult last;
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto client = Client(via);
      if (!client) break;
      last = client->GetManyBlocking({key}, 2s).front();
      if (last.status.ok()) break;
    }
    return last;
  }

  std::vector<std::unique_ptr<Proc>> procs_;
  std::string db_dir_ =
      (std::filesystem::temp_directory_path() / ("dmoe_dht_itest_" + std::to_string(getpid())))
          .string();
};

TEST_F(DhtUdpTest, SixteenProcessesPutGetKillGet) {
  Proc& first = Start({"--db", db_dir_ + "/n0"});
  ASSERT_FALSE(first.address.empty()) << "first dmoe-dht did not start";
  for (int i = 1; i < 16; ++i) {
    Proc& p = Start({"--bootstrap", procs_[static_cast<size_t>(i) / 2]->address});
    ASSERT_FALSE(p.address.empty()) << "dmoe-dht " << i << " did not start";
  }
  // Put through node 3.
  {
    auto client = Client(procs_[3]->address);
    ASSERT_NE(client, nullptr);
    auto stored =
        client->PutBlocking("expert/ffn.3.14", "peer-a", "{\"endpoint\":\"http://x\"}", 120s);
    ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    EXPECT_GE(*stored, 8);  // of 15 reachable nodes; a loaded machine may time a few out
  }
  // Get through node 12.
  KeyResult r = GetWithin(procs_[12]->address, "expert/ffn.3.14");
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_EQ(r.records.size(), 1u);
  EXPECT_EQ(r.records[0].value, "{\"endpoint\":\"http://x\"}");

#ifdef DMOE_CLI_BINARY
  // The command-line client: put through node 4, get through node 9 (exit 0 found, 1 not found).
  std::string key_file = db_dir_ + "/cli.key";
  std::filesystem::create_directories(db_dir_);
  std::string put_cmd = std::string(DMOE_CLI_BINARY) + " dht put --network itest --dht " +
                        procs_[4]->address + " --identity " + key_file +
                        " prefix/ffn. 3 '{\"uid\":\"ffn.3.14\"}' --ttl 60 > /dev/null";
  EXPECT_EQ(WEXITSTATUS(std::system(put_cmd.c_str())), 0) << put_cmd;
  std::string get_cmd = std::string(DMOE_CLI_BINARY) + " dht get --network itest --dht " +
                        procs_[9]->address + " prefix/ffn.";
  FILE* pipe = popen(get_cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string printed;
  char buf[512];
  while (fgets(buf, sizeof(buf), pipe) != nullptr) printed += buf;
  EXPECT_EQ(WEXITSTATUS(pclose(pipe)), 0) << printed;
  EXPECT_NE(printed.find("{\"key\":\"prefix/ffn.\",\"entries\":{\"3\":{\"value\":"),
            std::string::npos)
      << printed;
  std::string miss_cmd = std::string(DMOE_CLI_BINARY) + " dht get --network itest --dht " +
                         procs_[9]->address + " prefix/none. > /dev/null";
  EXPECT_EQ(WEXITSTATUS(std::system(miss_cmd.c_str())), 1);
#endif

  // SIGKILL five nodes (not 0, which is restarted below, nor 12 and 15, used to get).
  for (int i : {2, 3, 5, 8, 11}) Kill(*procs_[static_cast<size_t>(i)], SIGKILL);
  r = GetWithin(procs_[15]->address, "expert/ffn.3.14");
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.records.size(), 1u);
  auto asker = Client(procs_[15]->address);
  ASSERT_NE(asker, nullptr);
  KeyResult missing = asker->GetManyBlocking({"expert/none"}, 3s).front();
  EXPECT_EQ(missing.status.code(), Code::kNotFound) << missing.status.ToString();

  // Node 0 stops cleanly on SIGTERM (exit 0, state saved) and rejoins from its database alone.
  int status = Kill(*procs_[0], SIGTERM);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  Proc& again = Start({"--db", db_dir_ + "/n0"});
  ASSERT_FALSE(again.address.empty());
  r = GetWithin(again.address, "expert/ffn.3.14");
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

// A node behind a relay announces the relay's port (--public-endpoint): the node it joins through
// puts it in its routing table there, after a PING through the relay, and hands that address on,
// so a third node stores on it through the relay too.
TEST_F(DhtUdpTest, NodeBehindARelayIsReachedAtItsPublicEndpoint) {
  Proc& a = Start({});
  ASSERT_FALSE(a.address.empty()) << "dmoe-dht A did not start";
  UdpForwarder relay;
  const std::string public_endpoint = "127.0.0.1:" + std::to_string(relay.port());
  Proc& b = Start({"--public-endpoint", public_endpoint, "--bootstrap", a.address});
  ASSERT_FALSE(b.address.empty()) << "dmoe-dht B did not start";
  EXPECT_NE(b.address, public_endpoint);
  std::optional<std::string> announcing = b.process->WaitForLine("announcing as ", 10s);
  ASSERT_TRUE(announcing.has_value()) << b.process->stderr_text();
  EXPECT_EQ(*announcing, "announcing as udp://" + public_endpoint);
  relay.Start(PortOf(b.address));

  // B's requests reach A straight from B's own port; A answers there, and verifies B with a PING
  // through the relay, whose PONG comes back through it.
  ASSERT_TRUE(testing::PollUntil([&] { return relay.answers_to(PortOf(a.address)) > 0; }, 20s))
      << "A never reached B through the relay; A's log:\n"
      << a.process->stderr_text();

  // A client that joins through A learns B from A at the relay's port and stores there too.
  std::unique_ptr<Dht> client;
  Result<int> stored = UnavailableError("no put ran");
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        client = Client(a.address);
        if (!client) return false;
        stored = client->PutBlocking("expert/ffn.0", "b", "{\"endpoint\":\"http://x\"}", 60s);
        return stored.ok() && *stored == 2;
      },
      20s))
      << (stored.ok() ? std::to_string(*stored) + " nodes stored" : stored.status().ToString());
  EXPECT_TRUE(relay.clients().count(PortOf(client->local_address())) == 1)
      << "the client reached B other than through the relay";
}

// The clock comes from the process's wiring; a Dht never picks one itself.
TEST(DhtStartTest, RefusesOptionsWithoutAClock) {
  DhtOptions o;
  o.listen = "127.0.0.1:0";
  auto dht = Dht::Start(std::move(o));
  ASSERT_FALSE(dht.ok());
  EXPECT_EQ(dht.status().code(), Code::kInvalidArgument);
  EXPECT_NE(dht.status().message().find("DhtOptions::clock"), std::string::npos)
      << dht.status().ToString();
}

}  // namespace
}  // namespace dmoe::dht
