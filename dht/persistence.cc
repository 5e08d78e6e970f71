#include "dht/persistence.h"

#include <spdlog/spdlog.h>

#include "core/hex.h"
#include "dht/message.h"

namespace dmoe::dht {
namespace {

constexpr std::string_view kCf = "node_state";
constexpr std::string_view kPrefix = "dht/";
constexpr std::string_view kContactPrefix = "dht/contact/";
constexpr std::string_view kRecordPrefix = "dht/record/";

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

Status SaveState(storage::KvStore& kv, const std::vector<Contact>& contacts,
                 const std::vector<Record>& own_records) {
  std::vector<std::pair<std::string, std::string>> entries;
  for (const Contact& c : contacts) {
    entries.emplace_back(std::string(kContactPrefix) + HexEncode(c.id), c.address.ToWire());
  }
  for (const Record& r : own_records) {
    NodeId key_id = KeyIdOf(r.key);
    entries.emplace_back(
        std::string(kRecordPrefix) + HexEncode(key_id) + "/" + HexEncode(Bytes(r.subkey)),
        EncodeRecordBlob(r));
  }
  return kv.ReplacePrefix(kCf, kPrefix, entries, /*sync=*/false);
}

Result<SavedState> LoadState(const storage::KvStore& kv) {
  SavedState state;
  DMOE_ASSIGN_OR_RETURN(auto contacts, kv.Scan(kCf, kContactPrefix));
  for (const auto& [key, value] : contacts) {
    auto addr = Address::FromWire(Bytes(value));
    if (!addr.ok()) {
      SPDLOG_WARN("dht: skipping saved contact {}: {}", key, addr.status().message());
      continue;
    }
    state.contacts.push_back(*addr);
  }
  DMOE_ASSIGN_OR_RETURN(auto records, kv.Scan(kCf, kRecordPrefix));
  for (const auto& [key, value] : records) {
    auto record = DecodeRecordBlob(Bytes(value));
    if (!record.ok()) {
      SPDLOG_WARN("dht: skipping saved record {}: {}", key, record.status().message());
      continue;
    }
    state.own_records.push_back(std::move(*record));
  }
  return state;
}

}  // namespace dmoe::dht
