#include "core/request_auth.h"

#include <charconv>
#include <fstream>

#include "core/hex.h"

namespace dmoe {

std::string RequestSigningString(std::string_view method, std::string_view path,
                                 std::string_view timestamp_ms, std::string_view body_hash_hex) {
  std::string s = "dmoe-req-v1\n";
  s.append(method).append("\n").append(path).append("\n").append(timestamp_ms).append("\n");
  s.append(body_hash_hex);
  return s;
}

RequestSignature SignRequest(const Identity& identity, std::string_view method,
                             std::string_view path, std::span<const uint8_t> body,
                             int64_t now_unix_ms) {
  RequestSignature sig;
  sig.key_hex = identity.public_key_hex();
  sig.timestamp_ms = std::to_string(now_unix_ms);
  std::string message =
      RequestSigningString(method, path, sig.timestamp_ms, HexEncode(Blake2b256(body)));
  sig.signature_hex = SignatureToHex(identity.Sign(message));
  return sig;
}

RequestVerifier::RequestVerifier(std::set<PublicKey> trainer_keys, const Clock& clock)
    : keys_(std::move(trainer_keys)), clock_(clock) {}

Result<std::set<PublicKey>> RequestVerifier::LoadKeyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read trainer key file " + path);
  std::set<PublicKey> keys;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    Result<PublicKey> key = PublicKeyFromHex(line);
    if (!key.ok()) {
      return InvalidArgumentError("trainer key file " + path + " line " + std::to_string(number) +
                                  ": " + key.status().message());
    }
    keys.insert(*key);
  }
  return keys;
}

Status RequestVerifier::CheckHead(const RequestSignature& sig) const {
  if (sig.key_hex.empty() || sig.timestamp_ms.empty() || sig.signature_hex.empty()) {
    return UnauthenticatedError(std::string("this server accepts training only from listed keys: "
                                            "send ") +
                                kKeyHeader + ", " + kTimestampHeader + " and " + kSignatureHeader);
  }
  Result<PublicKey> key = PublicKeyFromHex(sig.key_hex);
  if (!key.ok())
    return UnauthenticatedError(std::string(kKeyHeader) + ": " + key.status().message());
  int64_t ts = 0;
  auto [ptr, ec] = std::from_chars(sig.timestamp_ms.data(),
                                   sig.timestamp_ms.data() + sig.timestamp_ms.size(), ts);
  if (ec != std::errc() || ptr != sig.timestamp_ms.data() + sig.timestamp_ms.size()) {
    return UnauthenticatedError(std::string(kTimestampHeader) + " '" + sig.timestamp_ms +
                                "' is not unix milliseconds");
  }
  if (keys_.count(*key) == 0) {
    return PermissionDeniedError("key " + sig.key_hex + " is not a listed trainer key");
  }
  int64_t skew = clock_.NowUnixMs() - ts;
  if (skew > kRequestWindowMs || skew < -kRequestWindowMs) {
    return UnauthenticatedError(std::string(kTimestampHeader) + " is " + std::to_string(skew) +
                                " ms from the server's clock (allowed: 30000)");
  }
  return Status::Ok();
}

Status RequestVerifier::Verify(const RequestSignature& sig, std::string_view method,
                               std::string_view path, std::string_view body_hash_hex) {
  DMOE_RETURN_IF_ERROR(CheckHead(sig));
  PublicKey key = *PublicKeyFromHex(sig.key_hex);
  Result<Signature> signature = SignatureFromHex(sig.signature_hex);
  if (!signature.ok()) {
    return UnauthenticatedError(std::string(kSignatureHeader) + ": " +
                                signature.status().message());
  }
  std::string message = RequestSigningString(method, path, sig.timestamp_ms, body_hash_hex);
  if (!VerifySignature(key, message, *signature)) {
    return UnauthenticatedError(
        "signature does not match the request (method, path, timestamp "
        "and body hash)");
  }
  const int64_t now = clock_.NowUnixMs();
  std::lock_guard<std::mutex> lock(mu_);
  while (!seen_order_.empty() && seen_order_.front().first < now) {
    seen_.erase(seen_order_.front().second);
    seen_order_.pop_front();
  }
  // Ed25519 signatures are deterministic, so the signature identifies the request; the canonical
  // hex form keeps an upper-case copy from passing as new.
  const std::string canonical = SignatureToHex(*signature);
  if (!seen_.insert(canonical).second) {
    return UnauthenticatedError("replayed request: this signature was already used");
  }
  // Remember until the timestamp leaves the window on either side.
  seen_order_.emplace_back(std::stoll(sig.timestamp_ms) + kRequestWindowMs, canonical);
  return Status::Ok();
}

}  // namespace dmoe
