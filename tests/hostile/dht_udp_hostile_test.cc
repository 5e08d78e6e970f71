// DHT rogues on real UDP sockets on loopback (issue 12 part 6): six dht::Dht nodes, and a raw
// socket that spoofs a node's key and sends small requests without a token.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "core/clock.h"
#include "dht/dht.h"
#include "dht/message.h"

namespace dmoe::dht {
namespace {

using namespace std::chrono_literals;

Identity SeedIdentity(uint8_t n) {
  std::array<uint8_t, 32> seed{};
  seed[0] = n;
  seed[1] = 0x77;
  return Identity::FromSeed(seed);
}

// A raw UDP socket on 127.0.0.1.
class RawSocket {
 public:
  RawSocket() {
    fd_ = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  ~RawSocket() { ::close(fd_); }
  size_t Send(uint16_t port, const Message& m) {
    Result<std::string> bytes = EncodeMessage(m);
    EXPECT_TRUE(bytes.ok());
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    ::sendto(fd_, bytes->data(), bytes->size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    return bytes->size();
  }
  // The next datagram within `timeout`, with its size.
  std::optional<std::pair<Message, size_t>> Receive(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    std::array<uint8_t, 2048> buf{};
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n <= 0) return std::nullopt;
    Result<Message> m = DecodeMessage(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)));
    if (!m.ok()) return std::nullopt;
    return std::make_pair(*m, static_cast<size_t>(n));
  }

 private:
  int fd_ = -1;
};

TEST(DhtUdpHostileTest, SpoofedKeyAndSmallRequestsOnRealSockets) {
  std::vector<std::unique_ptr<Dht>> nodes;
  for (uint8_t i = 0; i < 6; ++i) {
    DhtOptions o;
    o.clock = &RealClock::Instance();
    o.listen = "127.0.0.1:0";
    o.identity = SeedIdentity(i + 1);
    if (i > 0) o.bootstrap = {nodes[0]->local_address()};
    auto dht = Dht::Start(o);
    ASSERT_TRUE(dht.ok()) << dht.status().ToString();
    nodes.push_back(std::move(*dht));
  }
  for (auto& n : nodes) ASSERT_TRUE(n->WaitBootstrapped(10s).ok());
  Dht& a = *nodes[0];
  // Poll until A holds the five others (each proved its key to A).
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (a.RoutingTableSize() < 5 && std::chrono::steady_clock::now() < deadline) {
    auto r = a.GetManyBlocking({"warmup"}, 200ms);  // traffic makes A challenge its senders
  }
  ASSERT_EQ(a.RoutingTableSize(), 5u);
  const Identity victim = SeedIdentity(2);
  const uint16_t victim_port = nodes[1]->port();

  RawSocket raw;
  auto request = [&](MessageType type) {
    Message m;
    m.type = type;
    m.network = "dmoe";
    m.sender = victim.public_key();  // the spoofed key
    m.txid = 0x8123'4567'89ab'cdefULL;
    m.target = NodeIdOf(victim.public_key());
    return m;
  };
  // 1. A small FIND_NODE without a token: the answer is no larger than the request.
  size_t sent = raw.Send(a.port(), request(MessageType::kFindNode));
  auto answer = raw.Receive(2s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->first.type, MessageType::kNodes);
  EXPECT_LE(answer->second, sent);
  ASSERT_TRUE(answer->first.token.has_value());
  const Token token = *answer->first.token;

  // 2. The victim's key from the raw socket, with the token: A challenges the raw socket, which
  //    cannot sign for the victim's key.
  NodeStats before = a.Stats();
  Message ping = request(MessageType::kPing);
  ping.token = token;
  raw.Send(a.port(), ping);
  bool challenged = false;
  for (int i = 0; i < 4 && !challenged; ++i) {
    auto got = raw.Receive(2s);
    if (!got) break;
    if (got->first.type == MessageType::kPing && got->first.prove) {
      challenged = true;
      Message pong;
      pong.type = MessageType::kPong;
      pong.network = "dmoe";
      pong.sender = victim.public_key();
      pong.txid = got->first.txid;
      pong.proof = Signature{};
      raw.Send(a.port(), pong);
    }
  }
  ASSERT_TRUE(challenged);
  deadline = std::chrono::steady_clock::now() + 5s;
  while (a.Stats().proofs_failed == before.proofs_failed &&
         std::chrono::steady_clock::now() < deadline) {
    raw.Receive(50ms);
  }
  EXPECT_GT(a.Stats().proofs_failed, before.proofs_failed);

  // 3. A still names the victim at the victim's own port.
  Message find = request(MessageType::kFindNode);
  find.sender = SeedIdentity(77).public_key();
  find.token = token;
  raw.Send(a.port(), find);
  std::optional<Message> nodes_answer;
  for (int i = 0; i < 4 && !nodes_answer; ++i) {
    auto got = raw.Receive(2s);
    if (got && got->first.type == MessageType::kNodes) nodes_answer = got->first;
  }
  ASSERT_TRUE(nodes_answer.has_value());
  bool listed = false;
  for (const WireContact& c : nodes_answer->nodes) {
    if (c.id != NodeIdOf(victim.public_key())) continue;
    listed = true;
    EXPECT_EQ(c.address.port, victim_port);
  }
  EXPECT_TRUE(listed);
  for (auto& n : nodes) n->Stop();
}

}  // namespace
}  // namespace dmoe::dht
