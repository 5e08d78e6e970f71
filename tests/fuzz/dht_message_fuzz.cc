// Fuzzes the DHT datagram decoder and the node behind it: any byte string must decode or be refused
// with a Status, a decoded message must survive re-encoding, and a Node fed the bytes must not
// crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/clock.h"
#include "dht/message.h"
#include "dht/node.h"

namespace {

class NullTransport final : public dmoe::dht::Transport {
 public:
  void Send(const dmoe::dht::Address&, std::span<const uint8_t>) override {}
};

dmoe::dht::Node& FuzzNode() {
  static dmoe::FakeClock clock;
  static NullTransport transport;
  static dmoe::dht::Node node = [] {
    std::array<uint8_t, 32> seed{};
    dmoe::dht::NodeOptions options;
    options.network = "fuzz";
    options.seed = 1;
    options.requests_per_second_per_address = 0;  // no rate limit: every input reaches the handlers
    return dmoe::dht::Node(dmoe::Identity::FromSeed(seed), transport, clock, options);
  }();
  return node;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  auto decoded = dmoe::dht::DecodeMessage(bytes);
  if (decoded.ok()) {
    auto again = dmoe::dht::EncodeMessage(*decoded);
    if (again.ok()) {
      auto round = dmoe::dht::DecodeMessage(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(again->data()), again->size()));
      if (!round.ok() || round->type != decoded->type || round->txid != decoded->txid ||
          round->records != decoded->records || round->prove != decoded->prove ||
          round->proof != decoded->proof || round->token != decoded->token ||
          round->padding != decoded->padding ||
          round->cursor_publisher != decoded->cursor_publisher) {
        std::abort();
      }
    }
  }
  (void)dmoe::dht::DecodeRecordBlob(bytes);
  dmoe::dht::Node& node = FuzzNode();
  node.OnDatagram(dmoe::dht::Address::V4(10, 0, 0, static_cast<uint8_t>(size), 1), bytes);
  node.Tick();
  return 0;
}
