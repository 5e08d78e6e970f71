// DHT records (PROTOCOL section 6): signed, expiring values under (key, subkey).
//
// Signed bytes. The signature is Ed25519 (libsodium) by `publisher` over exactly:
//
//   "dmoe-dht-v1"                      11 bytes, the domain prefix, no terminator
//   u32 len(key)    || key             lengths are unsigned 32-bit big-endian
//   u32 len(subkey) || subkey
//   u32 len(value)  || value
//   u64 expiration_ms                  unix milliseconds, big-endian
//   publisher                          32 bytes, the Ed25519 public key
//   u64 seq                            big-endian
//
// Every variable-length field carries its length, so no two distinct records share signed bytes.
//
// Acceptance (a node stores a record only if all hold):
//   - key 1..max_key_bytes, subkey 0..max_subkey_bytes, value 0..max_value_bytes (1 KiB by
//   default),
//     and the three together at most max_record_bytes, so the record fits one datagram;
//   - now < expiration_ms <= now + kMaxTtlMs + kMaxClockSkewMs (10 min + 3 s);
//   - the signature verifies;
//   - the node holds no unexpired record of the same (key, subkey, publisher), or the one it holds
//     has a lower seq, or the same seq and an earlier expiration. Records of one subkey from
//     different publishers are kept side by side (at most StoreLimits::max_publishers_per_subkey
//     of them); no publisher replaces another's record. Re-sending the identical record is
//     accepted as a no-op (republish).
#ifndef DMOE_DHT_RECORD_H_
#define DMOE_DHT_RECORD_H_

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_set>

#include "core/identity.h"
#include "core/status.h"

namespace dmoe::dht {

inline constexpr std::string_view kSignatureDomain = "dmoe-dht-v1";
inline constexpr int64_t kMaxTtlMs = 10 * 60 * 1000;
inline constexpr int64_t kMaxClockSkewMs = 3000;

struct RecordLimits {
  size_t max_key_bytes = 128;
  size_t max_subkey_bytes = 128;
  size_t max_value_bytes = 1024;
  // key + subkey + value, so that any record fits one datagram with the message around it (a VALUE
  // answer costs at most 260 bytes beside these three fields).
  size_t max_record_bytes = 1140;
};

struct Record {
  std::string key;
  std::string subkey;
  std::string value;  // opaque bytes
  int64_t expiration_ms = 0;
  PublicKey publisher{};
  uint64_t seq = 0;
  Signature signature{};

  friend bool operator==(const Record&, const Record&) = default;
};

// Why a record (or a datagram) was refused; each reason has a counter in NodeStats.
enum class RejectReason {
  kNone = 0,
  kBadSignature,
  kExpired,
  kTtlTooLong,
  kBadKey,
  kValueTooLarge,
  kLowerSeq,
  kTooManyPublishers,  // the subkey has max_publishers_per_subkey other publishers
  kTooManySubkeys,
  kStoreFull,
  kPublisherQuota,  // the publisher holds max_records_per_publisher records here
  kSourceQuota,     // the source address stored max_records_per_source records here
  kCount,           // number of reasons, not a reason
};

std::string_view RejectReasonName(RejectReason reason);
// The Status a STORE answer carries for a refusal (kUnauthenticated for a bad signature,
// kResourceExhausted for full stores, quotas and too many publishers, else kInvalidArgument).
Status RejectStatus(RejectReason reason, const Record& record);

// The exact bytes the signature covers (see the file comment).
std::string SignedBytes(const Record& record);

// Builds and signs a record with `identity` as publisher.
Record SignRecord(const Identity& identity, std::string key, std::string subkey, std::string value,
                  int64_t expiration_ms, uint64_t seq);

bool VerifyRecordSignature(const Record& record);

// Checks sizes and the expiration window at `now_ms`, without the signature.
RejectReason CheckRecordShape(const Record& record, int64_t now_ms, const RecordLimits& limits);

// Whether `incoming` may replace `existing` (both for the same key and subkey, `existing`
// unexpired). Records of other publishers never replace each other (kOtherPublisher): they are
// kept side by side.
enum class ReplaceDecision { kReplace, kSame, kLowerSeq, kOtherPublisher };
ReplaceDecision DecideReplace(const Record& existing, const Record& incoming);

// A bounded set of records whose signatures verified, so a record seen again (republish, repeated
// gets) costs a hash instead of an Ed25519 verification (~50 us). Single-threaded.
class VerifiedCache {
 public:
  explicit VerifiedCache(size_t capacity = 65536) : capacity_(capacity) {}
  // Verifies through the cache.
  bool Verify(const Record& record);

 private:
  size_t capacity_;
  std::unordered_set<std::string> set_;
  std::deque<std::string> order_;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_RECORD_H_
