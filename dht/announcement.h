// Expert announcements (PROTOCOL section 6): the DHT keys and JSON values through which servers
// say what they host and gating clients, routers and tools find it. Written here once so that the
// server that writes them and every reader agree.
//
//   key "expert/<uid>", subkey <peer_id>:  {"endpoint","step","load","type","hidden_dim"}
//   key "prefix/<grid prefix>", subkey <next index>:  {"uid","peer_id"}
#ifndef DMOE_DHT_ANNOUNCEMENT_H_
#define DMOE_DHT_ANNOUNCEMENT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe::dht {

// "expert/ffn.3.14"
std::string ExpertKey(std::string_view uid);
// "prefix/ffn.3." for the grid prefix "ffn.3."
std::string PrefixKey(std::string_view grid_prefix);

struct ExpertAnnouncement {
  std::string endpoint;  // "http://host:port"
  int64_t step = 0;
  double load = 0;  // 0..1
  std::string type;
  int64_t hidden_dim = 0;

  std::string ToJson() const;
  // kInvalidArgument naming the field when the value is not such an object (a forged or foreign
  // record must not crash a reader).
  static Result<ExpertAnnouncement> Parse(std::string_view json);
};

struct PrefixEntry {
  std::string uid;      // an expert under this prefix
  std::string peer_id;  // who announced it

  std::string ToJson() const;
  static Result<PrefixEntry> Parse(std::string_view json);
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_ANNOUNCEMENT_H_
