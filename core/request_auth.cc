#include "core/request_auth.h"

#include <sodium.h>

#include <array>
#include <cctype>
#include <fstream>
#include <optional>

#include "core/hex.h"
#include "core/integer.h"

namespace dmoe {
namespace {

bool IsLowerHex(std::string_view s, size_t chars) {
  if (s.size() != chars) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string RandomHex(size_t bytes) {
  EnsureSodiumInitialized();
  std::vector<uint8_t> buf(bytes);
  randombytes_buf(buf.data(), buf.size());
  return HexEncode(buf);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string RequestSigningString(std::string_view server_peer_id, std::string_view method,
                                 std::string_view path, std::string_view timestamp_ms,
                                 std::string_view nonce_hex, std::string_view body_hash_hex) {
  std::string s = "dmoe-req-v2\n";
  s.append(server_peer_id).append("\n");
  s.append(method).append("\n").append(path).append("\n").append(timestamp_ms).append("\n");
  s.append(nonce_hex).append("\n");
  s.append(body_hash_hex);
  return s;
}

RequestSignature SignRequest(const Identity& identity, std::string_view server_peer_id,
                             std::string_view method, std::string_view path,
                             std::span<const uint8_t> body, int64_t now_unix_ms) {
  RequestSignature sig;
  sig.key_hex = identity.public_key_hex();
  sig.timestamp_ms = std::to_string(now_unix_ms);
  sig.nonce_hex = RandomHex(kNonceHexChars / 2);
  std::string message = RequestSigningString(server_peer_id, method, path, sig.timestamp_ms,
                                             sig.nonce_hex, HexEncode(Blake2b256(body)));
  sig.signature_hex = SignatureToHex(identity.Sign(message));
  return sig;
}

RequestVerifier::RequestVerifier(std::set<PublicKey> trainer_keys, std::string server_peer_id,
                                 const Clock& clock)
    : keys_(std::move(trainer_keys)), server_peer_id_(std::move(server_peer_id)), clock_(clock) {}

Result<std::set<PublicKey>> RequestVerifier::LoadKeyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read key file " + path);
  std::set<PublicKey> keys;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    Result<PublicKey> key = PublicKeyFromHex(line);
    if (!key.ok()) {
      return InvalidArgumentError("key file " + path + " line " + std::to_string(number) + ": " +
                                  key.status().message());
    }
    keys.insert(*key);
  }
  return keys;
}

Status RequestVerifier::CheckHead(const RequestSignature& sig) const {
  if (sig.key_hex.empty() || sig.timestamp_ms.empty() || sig.signature_hex.empty()) {
    return UnauthenticatedError(std::string("this server accepts training only from listed keys: "
                                            "send ") +
                                kKeyHeader + ", " + kTimestampHeader + ", " + kNonceHeader +
                                " and " + kSignatureHeader + " (dmoe-req-v2)");
  }
  if (sig.nonce_hex.empty()) {
    return UnauthenticatedError(
        std::string("dmoe-req-v1 signatures are no longer accepted: sign dmoe-req-v2 (it names "
                    "this server's peer id ") +
        server_peer_id_ + " and a nonce) and send " + kNonceHeader);
  }
  if (!IsLowerHex(sig.nonce_hex, kNonceHexChars)) {
    return UnauthenticatedError(std::string(kNonceHeader) + " must be " +
                                std::to_string(kNonceHexChars) + " lowercase hex characters");
  }
  Result<PublicKey> key = PublicKeyFromHex(sig.key_hex);
  if (!key.ok())
    return UnauthenticatedError(std::string(kKeyHeader) + ": " + key.status().message());
  const std::optional<int64_t> ts = ParseInteger<int64_t>(sig.timestamp_ms);
  if (!ts) {
    return UnauthenticatedError(std::string(kTimestampHeader) + " '" + sig.timestamp_ms +
                                "' is not unix milliseconds");
  }
  if (keys_.count(*key) == 0) {
    return PermissionDeniedError("key " + sig.key_hex + " is not a listed trainer key");
  }
  int64_t skew = clock_.NowUnixMs() - *ts;
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
  std::string message = RequestSigningString(server_peer_id_, method, path, sig.timestamp_ms,
                                             sig.nonce_hex, body_hash_hex);
  if (!VerifySignature(key, message, *signature)) {
    return UnauthenticatedError(
        "signature does not match the request (dmoe-req-v2 over this server's peer id " +
        server_peer_id_ + ", method, path, timestamp, nonce and body hash)");
  }
  const int64_t now = clock_.NowUnixMs();
  std::lock_guard<std::mutex> lock(mu_);
  while (!seen_order_.empty() && seen_order_.front().first < now) {
    seen_.erase(seen_order_.front().second);
    seen_order_.pop_front();
  }
  // Ed25519 signatures are deterministic, so the signature identifies the signed string; the
  // canonical hex form keeps an upper-case copy from passing as new. The nonce (per key) catches
  // the same request signed twice.
  const std::string by_signature = "s:" + SignatureToHex(*signature);
  const std::string by_nonce = "n:" + PublicKeyToHex(key) + ":" + sig.nonce_hex;
  if (seen_.count(by_signature) || seen_.count(by_nonce)) {
    return UnauthenticatedError("replayed request: this nonce or signature was already used");
  }
  // Remember until the timestamp leaves the window on either side.
  // CheckHead above took the timestamp as a number.
  const int64_t expiry = ParseInteger<int64_t>(sig.timestamp_ms).value_or(0) + kRequestWindowMs;
  for (const std::string& entry : {by_signature, by_nonce}) {
    seen_.insert(entry);
    seen_order_.emplace_back(expiry, entry);
  }
  return Status::Ok();
}

bool ProofRateLimiter::Allow(int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t second = now_ms / 1000;
  if (second != second_) {
    second_ = second;
    used_ = 0;
  }
  if (used_ >= per_second_) return false;
  ++used_;
  return true;
}

std::string NewChallengeHex() { return RandomHex(kChallengeHexChars / 2); }

bool IsChallengeHex(std::string_view hex) {
  if (hex.size() != kChallengeHexChars) return false;
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

std::string ProofSigningString(std::string_view peer_id, std::string_view challenge_hex) {
  std::string s = "dmoe-proof-v1\n";
  s.append(peer_id).append("\n").append(Lower(challenge_hex));
  return s;
}

std::string SignProof(const Identity& identity, std::string_view challenge_hex) {
  return SignatureToHex(identity.Sign(ProofSigningString(identity.peer_id(), challenge_hex)));
}

bool VerifyProof(const PublicKey& key, std::string_view challenge_hex, std::string_view proof_hex) {
  if (!IsChallengeHex(challenge_hex)) return false;
  Result<Signature> sig = SignatureFromHex(proof_hex);
  if (!sig.ok()) return false;
  return VerifySignature(key, ProofSigningString(PeerIdOf(key), challenge_hex), *sig);
}

}  // namespace dmoe
