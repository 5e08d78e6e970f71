// Model specs reach the router from any trainer, and announcements reach every reader from any DHT
// node: both parsers must refuse garbage with a Status, never crash, and accept only what
// round-trips.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "dht/announcement.h"
#include "model/model_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  dmoe::Result<dmoe::model::ModelSpec> spec = dmoe::model::ParseModelSpec(text);
  if (spec.ok()) {
    dmoe::Result<dmoe::model::ModelSpec> again = dmoe::model::ParseModelSpec(spec->ToJson());
    if (!again.ok() || again->ToJson() != spec->ToJson()) std::abort();
  } else if (spec.status().code() != dmoe::Code::kInvalidArgument) {
    std::abort();
  }
  auto announcement = dmoe::dht::ExpertAnnouncement::Parse(text);
  if (!announcement.ok() && announcement.status().code() != dmoe::Code::kInvalidArgument)
    std::abort();
  auto entry = dmoe::dht::PrefixEntry::Parse(text);
  if (entry.ok() && !dmoe::dht::PrefixEntry::Parse(entry->ToJson()).ok()) std::abort();
  return 0;
}
