#include "dht/record.h"

#include "core/hex.h"

namespace dmoe::dht {
namespace {

void PutU32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutField(std::string& out, std::string_view field) {
  PutU32(out, static_cast<uint32_t>(field.size()));
  out.append(field);
}

}  // namespace

std::string_view RejectReasonName(RejectReason reason) {
  switch (reason) {
    case RejectReason::kNone:
      return "none";
    case RejectReason::kBadSignature:
      return "bad_signature";
    case RejectReason::kExpired:
      return "expired";
    case RejectReason::kTtlTooLong:
      return "ttl_too_long";
    case RejectReason::kBadKey:
      return "bad_key";
    case RejectReason::kValueTooLarge:
      return "value_too_large";
    case RejectReason::kLowerSeq:
      return "lower_seq";
    case RejectReason::kTooManyPublishers:
      return "too_many_publishers";
    case RejectReason::kTooManySubkeys:
      return "too_many_subkeys";
    case RejectReason::kStoreFull:
      return "store_full";
    case RejectReason::kPublisherQuota:
      return "publisher_quota";
    case RejectReason::kSourceQuota:
      return "source_quota";
    case RejectReason::kCount:
      break;
  }
  return "unknown";
}

Status RejectStatus(RejectReason reason, const Record& record) {
  std::string where = "record '" + record.key + "'/'" + record.subkey + "'";
  switch (reason) {
    case RejectReason::kNone:
      return Status::Ok();
    case RejectReason::kBadSignature:
      return UnauthenticatedError(where + ": signature does not verify for its publisher");
    case RejectReason::kExpired:
      return InvalidArgumentError(where + ": already expired");
    case RejectReason::kTtlTooLong:
      return InvalidArgumentError(where + ": expiration more than 10 min + 3 s ahead");
    case RejectReason::kBadKey:
      return InvalidArgumentError(where + ": key must be 1..128 bytes and subkey 0..128 bytes");
    case RejectReason::kValueTooLarge:
      return PayloadTooLargeError(where + ": value of " + std::to_string(record.value.size()) +
                                  " bytes exceeds the limit (1 KiB, and key + subkey + value at "
                                  "most 1140 bytes so the record fits one datagram)");
    case RejectReason::kLowerSeq:
      return InvalidArgumentError(where + ": seq " + std::to_string(record.seq) +
                                  " is not newer than the stored record");
    case RejectReason::kTooManyPublishers:
      return ResourceExhaustedError(where +
                                    ": subkey has the maximum number of publishers on this node");
    case RejectReason::kTooManySubkeys:
      return ResourceExhaustedError(where + ": key has the maximum number of records");
    case RejectReason::kStoreFull:
      return ResourceExhaustedError(where + ": node store is full");
    case RejectReason::kPublisherQuota:
      return ResourceExhaustedError(where + ": publisher holds its quota of records on this node");
    case RejectReason::kSourceQuota:
      return ResourceExhaustedError(where +
                                    ": source address stored its quota of records on this node");
    case RejectReason::kCount:
      break;
  }
  return InternalError("unknown reject reason");
}

std::string SignedBytes(const Record& r) {
  std::string out;
  out.reserve(kSignatureDomain.size() + 12 + r.key.size() + r.subkey.size() + r.value.size() + 48);
  out.append(kSignatureDomain);
  PutField(out, r.key);
  PutField(out, r.subkey);
  PutField(out, r.value);
  PutU64(out, static_cast<uint64_t>(r.expiration_ms));
  out.append(reinterpret_cast<const char*>(r.publisher.data()), r.publisher.size());
  PutU64(out, r.seq);
  return out;
}

Record SignRecord(const Identity& identity, std::string key, std::string subkey, std::string value,
                  int64_t expiration_ms, uint64_t seq) {
  Record r;
  r.key = std::move(key);
  r.subkey = std::move(subkey);
  r.value = std::move(value);
  r.expiration_ms = expiration_ms;
  r.publisher = identity.public_key();
  r.seq = seq;
  r.signature = identity.Sign(std::string_view(SignedBytes(r)));
  return r;
}

bool VerifyRecordSignature(const Record& record) {
  return VerifySignature(record.publisher, std::string_view(SignedBytes(record)), record.signature);
}

RejectReason CheckRecordShape(const Record& r, int64_t now_ms, const RecordLimits& limits) {
  if (r.key.empty() || r.key.size() > limits.max_key_bytes ||
      r.subkey.size() > limits.max_subkey_bytes) {
    return RejectReason::kBadKey;
  }
  if (r.value.size() > limits.max_value_bytes ||
      r.key.size() + r.subkey.size() + r.value.size() > limits.max_record_bytes) {
    return RejectReason::kValueTooLarge;
  }
  if (r.expiration_ms <= now_ms) return RejectReason::kExpired;
  if (r.expiration_ms > now_ms + kMaxTtlMs + kMaxClockSkewMs) return RejectReason::kTtlTooLong;
  return RejectReason::kNone;
}

ReplaceDecision DecideReplace(const Record& existing, const Record& incoming) {
  if (existing.publisher != incoming.publisher) return ReplaceDecision::kOtherPublisher;
  if (incoming.seq > existing.seq) return ReplaceDecision::kReplace;
  if (incoming.seq == existing.seq) {
    if (incoming.expiration_ms > existing.expiration_ms) return ReplaceDecision::kReplace;
    if (incoming == existing) return ReplaceDecision::kSame;
  }
  return ReplaceDecision::kLowerSeq;
}

bool VerifiedCache::Verify(const Record& record) {
  std::string signed_bytes = SignedBytes(record);
  signed_bytes.append(reinterpret_cast<const char*>(record.signature.data()),
                      record.signature.size());
  Hash256 h = Blake2b256(std::string_view(signed_bytes));
  std::string cache_key(reinterpret_cast<const char*>(h.data()), h.size());
  if (set_.count(cache_key) != 0) return true;
  signed_bytes.resize(signed_bytes.size() - record.signature.size());
  if (!VerifySignature(record.publisher, std::string_view(signed_bytes), record.signature)) {
    return false;
  }
  if (capacity_ == 0) return true;
  if (order_.size() >= capacity_) {
    set_.erase(order_.front());
    order_.pop_front();
  }
  set_.insert(cache_key);
  order_.push_back(std::move(cache_key));
  return true;
}

}  // namespace dmoe::dht
