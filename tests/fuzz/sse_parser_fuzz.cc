// An event stream from a server we do not control reaches SseParser in whatever pieces the
// network makes: the messages (and the error, if any) must not depend on where the stream was cut,
// no message may pass the limit, and every message must survive SseEvent and a second parse
// unchanged.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "net/sse.h"

namespace {

using dmoe::Status;
using dmoe::net::SseMessage;
using dmoe::net::SseParser;

// Small, so that the fuzzer reaches it.
constexpr size_t kMaxMessageBytes = 256;

struct Outcome {
  std::vector<SseMessage> messages;
  Status status;
};

// Feeds `stream` in pieces of 1 to 16 bytes chosen by `cuts` (cycling), or whole when cuts is 0.
Outcome Parse(std::string_view stream, uint8_t cuts, size_t max = kMaxMessageBytes) {
  SseParser parser(max);
  Outcome out;
  auto keep = [&](SseMessage m) { out.messages.push_back(std::move(m)); };
  for (size_t at = 0, k = 0; at < stream.size() && out.status.ok(); ++k) {
    const size_t len = cuts == 0 ? stream.size() : 1 + ((cuts >> (k % 5)) & 15);
    out.status = parser.Feed(stream.substr(at, len), keep);
    at += len;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Outcome whole = Parse(stream, 0);
  const Outcome cut = Parse(stream, data[0]);
  if (whole.status.code() != cut.status.code()) std::abort();
  // A failure ends the parse where the limit was passed, which is the same byte either way.
  if (whole.messages.size() != cut.messages.size()) std::abort();
  for (size_t i = 0; i < whole.messages.size(); ++i) {
    const SseMessage& m = whole.messages[i];
    if (m.data != cut.messages[i].data || m.event != cut.messages[i].event) std::abort();
    if (m.data.size() > kMaxMessageBytes) std::abort();
    // A second parser with room for the space SseEvent puts after "event:", which the first
    // parser's line limit may not have left.
    const Outcome again = Parse(dmoe::net::SseEvent(m.data, m.event), 0, 2 * kMaxMessageBytes);
    if (!again.status.ok() || again.messages.size() != 1) std::abort();
    if (again.messages[0].data != m.data || again.messages[0].event != m.event) std::abort();
  }
  return 0;
}
