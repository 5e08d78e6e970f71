// Real UDP: 16 dmoe-dht processes on loopback. Put through one, get through another, SIGKILL five,
// get again; then a node stopped with SIGTERM restarts from its database without a bootstrap
// address. No sleeps: every wait polls a pipe or a DHT call with a deadline; every process is
// killed and reaped in TearDown even when an assertion fails.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "dht/dht.h"
#include "tests/testing/process.h"

namespace dmoe::dht {
namespace {

using namespace std::chrono_literals;

struct Proc {
  std::unique_ptr<testing::Process> process;  // SIGKILLed and reaped when destroyed
  std::string address;                        // 127.0.0.1:PORT
  std::string peer_id;
};

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
    std::vector<std::string> args = {DMOE_DHT_BINARY, "--listen",    "127.0.0.1:0", "--network",
                                     "itest",         "--log-level", "warn"};
    args.insert(args.end(), extra.begin(), extra.end());
    procs_.push_back(std::make_unique<Proc>());
    Proc& p = *procs_.back();
    auto spawned = testing::Process::Spawn(args);
    EXPECT_TRUE(spawned.ok()) << spawned.status().ToString();
    if (!spawned.ok()) return p;
    p.process = std::move(spawned).value();
    std::optional<std::string> line = p.process->WaitForLine("listening on ", 10s);
    std::smatch m;
    static const std::regex re("listening on udp://([0-9.]+:[0-9]+) peer_id=([0-9a-f]{64})");
    if (line.has_value() && std::regex_search(*line, m, re)) {
      p.address = m[1];
      p.peer_id = m[2];
    }
    return p;
  }

  // A client node that joins through `via`, like `dmoe dht get/put`.
  std::unique_ptr<Dht> Client(const std::string& via) {
    DhtOptions o;
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

}  // namespace
}  // namespace dmoe::dht
