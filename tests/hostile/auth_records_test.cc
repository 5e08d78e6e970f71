// Endpoints prove their key; replicas by health, never by expiry; --server-keys; bans by key
// (issue 12 parts 2 and 5), with real dmoe-dht and dmoe-server processes on loopback and the
// gating client (Swarm + RemoteMixtureOfExperts) in the test process, as a trainer or router runs
// it. Strangers publish records with long TTLs naming the honest server's endpoint, or endpoints
// of their own that cannot prove the publisher's key, and prefix records for coordinates nobody
// serves: honest calls still succeed, and no stranger endpoint is ever called.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/request_auth.h"
#include "dht/dht.h"
#include "gating/gating.h"
#include "tests/hostile/rogue_auth.h"
#include "tests/integration/server_test_util.h"
#include "tests/integration/swarm_util.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;
using gating::RemoteMixtureOfExperts;
using gating::RemoteMixtureOfExpertsOptions;
using gating::Swarm;
using gating::SwarmOptions;
using integration::ServerProcess;

constexpr int64_t kSwarmDim = 64;  // integration::SwarmServerArgs' experts

// The public key a server proves at `endpoint`.
PublicKey ProvenKeyAt(const std::string& endpoint) {
  const std::string challenge = NewChallengeHex();
  Result<net::Response> r = net::Fetch("GET", endpoint + "/v1/health?challenge=" + challenge);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return {};
  auto j = nlohmann::json::parse(r->body_view());
  Result<PublicKey> key = PublicKeyFromHex(j["public_key"].get<std::string>());
  EXPECT_TRUE(key.ok() && VerifyProof(*key, challenge, j["proof"].get<std::string>()));
  return key.ok() ? *key : PublicKey{};
}

class AuthRecordsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<integration::DhtProcess> dht = integration::StartDht();
    ASSERT_TRUE(dht.ok()) << dht.status().ToString();
    dht_ = std::move(dht).value();
    dht::DhtOptions options;
    options.clock = &RealClock::Instance();
    options.listen = "127.0.0.1:0";
    options.bootstrap = {dht_.address};
    options.node.client = true;
    Result<std::unique_ptr<dht::Dht>> client = dht::Dht::Start(std::move(options));
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(client).value();
    ASSERT_TRUE(client_->WaitBootstrapped(10s).ok());
  }
  void TearDown() override {
    if (client_) client_->Stop();
  }

  // dmoe-server hosting ffn.0.[0:4] (dim 64), announcing every second with a 3 s TTL.
  Result<ServerProcess> StartServer(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = integration::SwarmServerArgs(0, dht_.address, "");
    args.insert(args.end(), extra.begin(), extra.end());
    return integration::StartServer(args);
  }

  // Waits until every `expert/ffn.0.<j>` key shows at least `publishers` records.
  bool WaitForPublishers(size_t publishers) {
    std::vector<std::string> keys;
    for (int j = 0; j < 4; ++j) keys.push_back("expert/ffn.0." + std::to_string(j));
    return testing::PollUntil(
        [&] {
          for (const dht::KeyResult& r : client_->GetManyBlocking(keys, 2s))
            if (r.records.size() < publishers) return false;
          return true;
        },
        30s);
  }

  // Runs `passes` forward passes of 8 tokens through a 1 x `width` grid layer; returns the
  // endpoints chosen, and adds requests and answers to the counts.
  std::multiset<std::string> Run(const std::shared_ptr<Swarm>& swarm, int passes, int64_t* requests,
                                 int64_t* answered, int64_t width = 4) {
    RemoteMixtureOfExperts moe(RemoteMixtureOfExpertsOptions(kSwarmDim, {1, width})
                                   .k_best(4)
                                   .k_min(1)
                                   .forward_timeout(10s)
                                   .timeout_after_k_min(2s)
                                   .allow_zero_outputs(true),
                               swarm);
    std::multiset<std::string> chosen;
    for (int i = 0; i < passes; ++i) {
      at::Tensor y = moe(at::randn({8, kSwarmDim}));
      EXPECT_TRUE(at::isfinite(y).all().item<bool>());
      for (const auto& row : moe->last_routing().chosen)
        for (const gating::ExpertChoice& c : row) chosen.insert(c.endpoint);
    }
    *requests += moe->stats().requests;
    *answered += moe->stats().answered;
    return chosen;
  }

  integration::DhtProcess dht_;
  std::unique_ptr<dht::Dht> client_;
  testing::TempDir dir_{"dmoe-hostile-records"};
};

TEST_F(AuthRecordsTest, StrangerRecordsWithLongTtlsAreNeverChosenAndTheirPublishersAreLiars) {
  Result<ServerProcess> honest = StartServer();
  ASSERT_TRUE(honest.ok()) << honest.status().ToString();
  // Three strangers, each announcing every expert for 10 minutes: one at the honest server's
  // endpoint, one at an endpoint that proves another key, one at an endpoint with no proof.
  Result<std::unique_ptr<RogueEndpoint>> other_key =
      RogueEndpoint::Start(RogueEndpoint::ProofMode::kOtherKey);
  Result<std::unique_ptr<RogueEndpoint>> no_proof =
      RogueEndpoint::Start(RogueEndpoint::ProofMode::kNone);
  ASSERT_TRUE(other_key.ok() && no_proof.ok());
  std::vector<std::unique_ptr<Stranger>> strangers;
  const std::vector<std::string> stranger_endpoints = {honest->endpoint, (*other_key)->endpoint(),
                                                       (*no_proof)->endpoint()};
  for (const std::string& endpoint : stranger_endpoints) {
    Result<std::unique_ptr<Stranger>> s = Stranger::Start(dht_.address);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    for (int j = 0; j < 4; ++j) {
      ASSERT_TRUE((*s)->AnnounceExpert("ffn.0." + std::to_string(j), endpoint, 600s).ok());
    }
    strangers.push_back(std::move(s).value());
  }
  // A stranger's prefix records for coordinates nobody serves, in the honest row.
  for (int j = 4; j < 8; ++j) {
    ASSERT_TRUE(strangers[0]->Put("prefix/ffn.0.", std::to_string(j), "{}", 600s).ok());
  }
  ASSERT_TRUE(WaitForPublishers(4)) << "the stranger records never showed up beside the honest";

  auto swarm = std::make_shared<Swarm>(client_.get(), RealClock::Instance());
  int64_t requests = 0, answered = 0;
  std::multiset<std::string> chosen = Run(swarm, 25, &requests, &answered, /*width=*/8);
  ASSERT_GT(requests, 0);
  EXPECT_EQ(chosen.count(honest->endpoint), chosen.size()) << "a stranger's replica was chosen";
  EXPECT_GE(static_cast<double>(answered), 0.99 * static_cast<double>(requests))
      << answered << " of " << requests;
  EXPECT_EQ((*other_key)->messages(), 0);
  EXPECT_EQ((*no_proof)->messages(), 0);
  EXPECT_EQ((*other_key)->upgrades().size(), 0u);
  EXPECT_GE((*other_key)->challenges(), 1) << "its endpoint was asked to prove the key";
  for (const auto& s : strangers) {
    EXPECT_TRUE(swarm->Liar(s->identity().peer_id())) << "a stranger was not caught lying";
  }
  std::printf("stranger records: %lld of %lld honest calls answered, %zu choices all honest\n",
              static_cast<long long>(answered), static_cast<long long>(requests), chosen.size());
}

TEST_F(AuthRecordsTest, ServerKeysKeepUnlistedPublishersOutEvenWhenTheyProveTheirKey) {
  Result<ServerProcess> listed = StartServer();
  Result<ServerProcess> unlisted = StartServer();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_TRUE(unlisted.ok()) << unlisted.status().ToString();
  const PublicKey listed_key = ProvenKeyAt(listed->endpoint);
  const PublicKey unlisted_key = ProvenKeyAt(unlisted->endpoint);
  ASSERT_TRUE(WaitForPublishers(2));

  // The key file as an operator writes it, read as dmoe-train and dmoe-router read it.
  const std::string file =
      dir_.WriteFile("servers.txt", "# our servers\n" + PublicKeyToHex(listed_key) + "\n");
  Result<std::set<PublicKey>> keys = RequestVerifier::LoadKeyFile(file);
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  SwarmOptions options;
  options.server_keys = *keys;
  auto swarm = std::make_shared<Swarm>(client_.get(), RealClock::Instance(), options);
  int64_t requests = 0, answered = 0;
  std::multiset<std::string> chosen = Run(swarm, 10, &requests, &answered);
  ASSERT_GT(requests, 0);
  EXPECT_EQ(chosen.count(unlisted->endpoint), 0u);
  EXPECT_EQ(chosen.count(listed->endpoint), chosen.size());
  EXPECT_EQ(answered, requests);
  const gating::Replica replica{unlisted->endpoint, PeerIdOf(unlisted_key), unlisted_key};
  EXPECT_EQ(swarm->Check(replica), gating::Usability::kUnusable);
}

TEST_F(AuthRecordsTest, AServerBannedAndBackAtANewEndpointWithTheSameKeyStaysBanned) {
  const std::string identity = dir_.Sub("rogue.key");
  // The rogue answers NaN to everything; it is the only server at first.
  Result<ServerProcess> rogue = StartServer({"--identity", identity, "--nan-rate", "1"});
  ASSERT_TRUE(rogue.ok()) << rogue.status().ToString();
  const PublicKey rogue_key = ProvenKeyAt(rogue->endpoint);
  const std::string rogue_peer = PeerIdOf(rogue_key);
  ASSERT_TRUE(WaitForPublishers(1));
  SwarmOptions options;
  options.health.ban_base = 60s;  // outlasts the test
  auto swarm = std::make_shared<Swarm>(client_.get(), RealClock::Instance(), options);
  int64_t requests = 0, answered = 0;
  Run(swarm, 3, &requests, &answered);  // three failed rounds: banned
  ASSERT_EQ(answered, 0);
  ASSERT_GE(swarm->health().Get(rogue_peer).bans, 1);

  // An honest server joins; the rogue comes back at a new endpoint with the same key.
  Result<ServerProcess> honest = StartServer();
  ASSERT_TRUE(honest.ok()) << honest.status().ToString();
  const std::string old_endpoint = rogue->endpoint;
  rogue->process.reset();  // killed and reaped
  Result<ServerProcess> back = StartServer({"--identity", identity, "--nan-rate", "1"});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_NE(back->endpoint, old_endpoint);
  ASSERT_EQ(PeerIdOf(ProvenKeyAt(back->endpoint)), rogue_peer);
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        for (const dht::KeyResult& r : client_->GetManyBlocking({"expert/ffn.0.0"}, 2s))
          for (const dht::Record& rec : r.records)
            if (rec.subkey == rogue_peer && rec.value.find(back->endpoint) != std::string::npos)
              return true;
        return false;
      },
      30s))
      << "the rogue's new endpoint never reached the DHT";

  requests = answered = 0;
  std::multiset<std::string> chosen = Run(swarm, 20, &requests, &answered);
  ASSERT_GT(requests, 0);
  EXPECT_EQ(chosen.count(back->endpoint), 0u) << "the banned key was used at its new endpoint";
  EXPECT_EQ(chosen.count(honest->endpoint), chosen.size());
  EXPECT_GE(static_cast<double>(answered), 0.99 * static_cast<double>(requests));
  const gating::Replica moved{back->endpoint, rogue_peer, rogue_key};
  EXPECT_EQ(swarm->Check(moved), gating::Usability::kUnusable);
  EXPECT_GE(swarm->health().Get(rogue_peer).bans, 1);
}

// dmoe-router reads --server-keys at start and names a bad line.
TEST(AuthFlagsTest, RouterRefusesAServerKeyFileWithABadLine) {
  testing::TempDir dir("dmoe-hostile-flags");
  const std::string file = dir.WriteFile("servers.txt", "# ours\nnot-a-key\n");
  testing::RunResult r =
      testing::Run({DMOE_ROUTER_BINARY, "--dht", "127.0.0.1:9", "--db", dir.Sub("db"),
                    "--server-keys", file, "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace dmoe::hostile
