// Saving and loading a DHT node's state in the "node_state" column family of storage::KvStore.
//
// Layout (keys sort bytewise; values are MessagePack):
//   "dht/contact/<hex node id>"            -> address, wire form (dht/address.h)
//   "dht/record/<hex key id>/<hex subkey>" -> an own record (EncodeRecordBlob)
// Save replaces both prefixes in one atomic write.
#ifndef DMOE_DHT_PERSISTENCE_H_
#define DMOE_DHT_PERSISTENCE_H_

#include <vector>

#include "core/status.h"
#include "dht/address.h"
#include "dht/record.h"
#include "dht/routing_table.h"
#include "storage/kv_store.h"

namespace dmoe::dht {

struct SavedState {
  std::vector<Address> contacts;
  std::vector<Record> own_records;
};

Status SaveState(storage::KvStore& kv, const std::vector<Contact>& contacts,
                 const std::vector<Record>& own_records);
// Entries that fail to decode are skipped (and logged), never fatal.
Result<SavedState> LoadState(const storage::KvStore& kv);

}  // namespace dmoe::dht

#endif  // DMOE_DHT_PERSISTENCE_H_
