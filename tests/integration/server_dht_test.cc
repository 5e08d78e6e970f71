// Announcements across processes (PROTOCOL section 6): two dmoe-server processes join a dmoe-dht
// node and announce disjoint experts; a DHT client sees both, with the grid prefixes a gating
// client searches; a server killed with SIGKILL announced with its TTL and disappears while the
// other stays. Nothing here asserts a wall-clock window: how often the maintenance thread wakes is
// tested on a FakeClock (tests/expert_server/maintenance_test.cc), record expiry in dht's tests.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "dht/record.h"
#include "tests/integration/server_test_util.h"
#include "tests/testing/process.h"

namespace dmoe::integration {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kNetwork[] = "srv-itest";
constexpr int kDhtDim = 16;
constexpr int kTtlSeconds = 3;
// Lookups give up on a dead node after the 1 s RPC timeout; 3 s leaves room for that.
constexpr auto kGetTimeout = 3s;

// subkey -> value of one key's records; empty when the lookup found none.
using Entries = std::map<std::string, std::string>;

class ServerDhtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<testing::DhtProcess> dht = testing::StartDht({"--network", kNetwork});
    ASSERT_TRUE(dht.ok()) << dht.status().ToString();
    dht_node_ = std::move(dht->process);
    dht_address_ = dht->address;

    dht::DhtOptions options;
    options.clock = &RealClock::Instance();
    options.listen = "127.0.0.1:0";
    options.bootstrap = {dht_address_};
    options.node.network = kNetwork;
    options.node.client = true;
    Result<std::unique_ptr<dht::Dht>> client = dht::Dht::Start(std::move(options));
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(client).value();
    ASSERT_TRUE(client_->WaitBootstrapped(10s).ok());
  }

  void TearDown() override {
    if (client_) client_->Stop();
  }

  Result<ServerProcess> StartAnnouncing(const std::string& experts) {
    std::vector<std::string> args = BaseServerArgs(experts, kDhtDim);
    args.insert(args.end(),
                {"--dht", dht_address_, "--dht-listen", "127.0.0.1:0", "--network", kNetwork,
                 "--announce-every", "1", "--announce-ttl", std::to_string(kTtlSeconds)});
    return StartServer(args);
  }

  // One lookup per key; fails the test for a lookup error other than "nothing found".
  std::map<std::string, Entries> Get(const std::vector<std::string>& keys) {
    std::map<std::string, Entries> out;
    std::vector<dht::KeyResult> results = client_->GetManyBlocking(keys, kGetTimeout);
    for (const dht::KeyResult& r : results) {
      Entries& entries = out[r.key];
      if (!r.status.ok()) {
        EXPECT_EQ(r.status.code(), Code::kNotFound) << r.key << ": " << r.status.ToString();
        continue;
      }
      for (const dht::Record& rec : r.records) entries[rec.subkey] = rec.value;
    }
    return out;
  }

  // Subkeys of each key.
  static std::map<std::string, std::set<std::string>> Subkeys(
      const std::map<std::string, Entries>& found) {
    std::map<std::string, std::set<std::string>> out;
    for (const auto& [key, entries] : found) {
      for (const auto& [subkey, value] : entries) out[key].insert(subkey);
      out[key];  // present even when empty
    }
    return out;
  }

  std::unique_ptr<testing::Process> dht_node_;
  std::string dht_address_;
  std::unique_ptr<dht::Dht> client_;
};

std::string PeerIdOf(ServerClient& client) {
  Result<net::Response> health = client.Get("/v1/health");
  if (!health.ok() || health->status != 200) return "";
  nlohmann::json j = nlohmann::json::parse(health->body_view(), nullptr, false);
  return j.is_object() && j.contains("peer_id") ? j["peer_id"].get<std::string>() : "";
}

// A loopback port held for the test's duration (bound, never listening), so that no other process
// takes it while a server announces it.
class ReservedPort {
 public:
  explicit ReservedPort(int type) : fd_(socket(AF_INET, type, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0 &&
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
  }
  ~ReservedPort() { close(fd_); }
  ReservedPort(const ReservedPort&) = delete;
  ReservedPort& operator=(const ReservedPort&) = delete;
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_;
  uint16_t port_ = 0;
};

// A server others reach through a port forward or relay announces that address, while it prints
// (and serves on) the one it listens on. Its DHT node announces a relay's address too; a node
// that cannot verify it still stores the server's records.
TEST_F(ServerDhtTest, PublicEndpointIsAnnouncedWhileTheServerListensElsewhere) {
  ReservedPort http_port(SOCK_STREAM), udp_port(SOCK_DGRAM);
  std::vector<std::string> args = BaseServerArgs("ffn.2.0", kDhtDim);
  args.insert(args.end(), {"--dht", dht_address_, "--dht-listen", "127.0.0.1:0", "--network",
                           kNetwork, "--announce-every", "1", "--public-endpoint",
                           http_port.endpoint(), "--dht-public-endpoint", udp_port.endpoint()});
  Result<ServerProcess> server = StartServer(args);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string announced = "http://" + http_port.endpoint();
  EXPECT_NE(server->endpoint, announced) << "\"listening on\" must name the listen address";
  std::optional<std::string> line = server->process->WaitForLine("announcing as ", 10s);
  ASSERT_TRUE(line.has_value()) << server->process->stderr_text();
  EXPECT_EQ(*line, "announcing as " + announced);
  // It serves where it listens.
  ServerClient client(server->endpoint);
  const std::string peer = PeerIdOf(client);
  ASSERT_EQ(peer.size(), 64u);

  std::map<std::string, Entries> found;
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        found = Get({"expert/ffn.2.0"});
        return found["expert/ffn.2.0"].count(peer) == 1;
      },
      20s))
      << "the announcement did not appear";
  nlohmann::json v = nlohmann::json::parse(found["expert/ffn.2.0"][peer], nullptr, false);
  ASSERT_TRUE(v.is_object()) << found["expert/ffn.2.0"][peer];
  EXPECT_EQ(v.value("endpoint", ""), announced);

  // The command-line client reads the same endpoint.
  testing::RunResult cli = testing::Run({DMOE_CLI_BINARY, "dht", "get", "--network", kNetwork,
                                         "--dht", dht_address_, "expert/ffn.2.0"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_NE(cli.out.find(peer), std::string::npos) << cli.out;
}

TEST_F(ServerDhtTest, TwoServersAnnounceAndAKilledOneExpires) {
  Result<ServerProcess> a = StartAnnouncing("ffn.0.0,ffn.0.1");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  Result<ServerProcess> b = StartAnnouncing("ffn.1.0");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ServerClient a_client(a->endpoint), b_client(b->endpoint);
  const std::string a_peer = PeerIdOf(a_client), b_peer = PeerIdOf(b_client);
  ASSERT_EQ(a_peer.size(), 64u);
  ASSERT_EQ(b_peer.size(), 64u);

  const std::vector<std::string> keys = {"expert/ffn.0.0", "expert/ffn.0.1", "expert/ffn.1.0",
                                         "prefix/ffn.",    "prefix/ffn.0.",  "prefix/ffn.1."};
  const std::map<std::string, std::set<std::string>> all_there = {
      {"expert/ffn.0.0", {a_peer}}, {"expert/ffn.0.1", {a_peer}},  {"expert/ffn.1.0", {b_peer}},
      {"prefix/ffn.", {"0", "1"}},  {"prefix/ffn.0.", {"0", "1"}}, {"prefix/ffn.1.", {"0"}}};
  std::map<std::string, Entries> found;
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        found = Get(keys);
        return Subkeys(found) == all_there;
      },
      20s))
      << "announcements did not all appear; last seen: " << nlohmann::json(Subkeys(found)).dump();

  auto check_expert = [&](const std::string& uid, const std::string& peer,
                          const std::string& endpoint) {
    SCOPED_TRACE(uid);
    nlohmann::json v = nlohmann::json::parse(found["expert/" + uid][peer], nullptr, false);
    ASSERT_TRUE(v.is_object()) << found["expert/" + uid][peer];
    EXPECT_EQ(v.value("endpoint", ""), endpoint);
    EXPECT_EQ(v.value("step", -1), 0);
    ASSERT_TRUE(v.contains("load") && v["load"].is_number()) << v.dump();
    EXPECT_GE(v["load"].get<double>(), 0.0);
    EXPECT_LE(v["load"].get<double>(), 1.0);
    EXPECT_EQ(v.value("type", ""), "ffn");
    EXPECT_EQ(v.value("hidden_dim", -1), kDhtDim);
  };
  check_expert("ffn.0.0", a_peer, a->endpoint);
  check_expert("ffn.0.1", a_peer, a->endpoint);
  check_expert("ffn.1.0", b_peer, b->endpoint);
  auto pointer = [&](const std::string& key, const std::string& subkey) {
    return nlohmann::json::parse(found[key][subkey], nullptr, false);
  };
  EXPECT_EQ(pointer("prefix/ffn.", "1"), nlohmann::json({{"uid", "ffn.1.0"}, {"peer_id", b_peer}}));
  EXPECT_EQ(pointer("prefix/ffn.0.", "0"),
            nlohmann::json({{"uid", "ffn.0.0"}, {"peer_id", a_peer}}));
  EXPECT_EQ(pointer("prefix/ffn.0.", "1"),
            nlohmann::json({{"uid", "ffn.0.1"}, {"peer_id", a_peer}}));
  EXPECT_EQ(pointer("prefix/ffn.", "0")["peer_id"], a_peer);

  // The command-line client sees the same record.
  testing::RunResult cli = testing::Run({DMOE_CLI_BINARY, "dht", "get", "--network", kNetwork,
                                         "--dht", dht_address_, "expert/ffn.1.0"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_NE(cli.out.find("\"key\":\"expert/ffn.1.0\""), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find(b_peer), std::string::npos) << cli.out;

  // A step taken on ffn.0.0 shows in a later announcement.
  std::vector<uint8_t> body =
      EncodeF32({Pattern("x", {1, kDhtDim}, 1), Pattern("grad_y", {1, kDhtDim}, 2, 0.1f)});
  Result<net::Response> trained = a_client.Backward("ffn.0.0", body);
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  ASSERT_EQ(trained->status, 200) << trained->body_view();
  EXPECT_TRUE(testing::PollUntil(
      [&] {
        Entries e = Get({"expert/ffn.0.0"})["expert/ffn.0.0"];
        nlohmann::json v = nlohmann::json::parse(e[a_peer], nullptr, false);
        return v.is_object() && v.value("step", -1) == 1;
      },
      15s))
      << "the announced step of ffn.0.0 never became 1";

  // b announces with the TTL of its flag: each record it put expires at most kTtlSeconds after
  // this lookup, which came after the put (ordering, not a window: dht tests check expiry itself
  // on a FakeClock).
  const int64_t looked_up_ms = RealClock().NowUnixMs();
  std::vector<dht::KeyResult> b_records = client_->GetManyBlocking({"expert/ffn.1.0"}, kGetTimeout);
  ASSERT_EQ(b_records.size(), 1u);
  ASSERT_FALSE(b_records[0].records.empty()) << b_records[0].status.ToString();
  for (const dht::Record& r : b_records[0].records) {
    EXPECT_LE(r.expiration_ms, looked_up_ms + kTtlSeconds * 1000)
        << "a record of the killed server would outlive its TTL";
  }

  // Kill b: its records stop being refreshed and expire; a's stay.
  b->process->Stop(SIGKILL, 10s);
  const auto killed_at = Clock::now();
  std::map<std::string, std::set<std::string>> without_b = all_there;
  without_b["expert/ffn.1.0"] = {};
  without_b["prefix/ffn."] = {"0"};
  without_b["prefix/ffn.1."] = {};
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        found = Get(keys);
        return Subkeys(found) == without_b;
      },
      std::chrono::seconds(kTtlSeconds) + 15s))
      << "last seen: " << nlohmann::json(Subkeys(found)).dump();
  const double gone_after_s = std::chrono::duration<double>(Clock::now() - killed_at).count();
  std::printf("[ dht      ] records of the killed server gone %.1f s after SIGKILL (ttl %d s)\n",
              gone_after_s, kTtlSeconds);
}

}  // namespace
}  // namespace dmoe::integration
