// Signed requests (PROTOCOL section 4, "Who may train"): a trainer signs
//   "dmoe-req-v1\n" + METHOD + "\n" + PATH + "\n" + TIMESTAMP + "\n" + hex(BLAKE2b-256(body))
// with its Ed25519 key and sends X-DMoE-Key, X-DMoE-Timestamp and X-DMoE-Signature; a server that
// runs with --trainer-keys checks them before it parses the body.
#ifndef DMOE_CORE_REQUEST_AUTH_H_
#define DMOE_CORE_REQUEST_AUTH_H_

#include <cstdint>
#include <deque>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"

namespace dmoe {

inline constexpr char kKeyHeader[] = "X-DMoE-Key";
inline constexpr char kTimestampHeader[] = "X-DMoE-Timestamp";
inline constexpr char kSignatureHeader[] = "X-DMoE-Signature";
inline constexpr int64_t kRequestWindowMs = 30'000;

// The three header values of a signed request.
struct RequestSignature {
  std::string key_hex;
  std::string timestamp_ms;
  std::string signature_hex;
};

// The exact bytes that are signed. `path` is the request target without its query string;
// `body_hash_hex` is hex(BLAKE2b-256(body)), of the empty body for a WebSocket upgrade.
std::string RequestSigningString(std::string_view method, std::string_view path,
                                 std::string_view timestamp_ms, std::string_view body_hash_hex);

// Signs a request at `now_unix_ms`.
RequestSignature SignRequest(const Identity& identity, std::string_view method,
                             std::string_view path, std::span<const uint8_t> body,
                             int64_t now_unix_ms);

// Checks signed requests against a set of trainer keys. Thread-safe.
class RequestVerifier {
 public:
  RequestVerifier(std::set<PublicKey> trainer_keys, const Clock& clock);

  // Reads a key file: one hex Ed25519 public key a line; blank lines and lines starting with '#'
  // are ignored. kInvalidArgument naming the line for anything else.
  static Result<std::set<PublicKey>> LoadKeyFile(const std::string& path);

  // Checks what can be checked before the body is read: headers present and well formed (else
  // kUnauthenticated), key listed (else kPermissionDenied), timestamp within 30 s of the clock
  // (else kUnauthenticated).
  Status CheckHead(const RequestSignature& sig) const;

  // The full check, once the body's hash is known: CheckHead, then the signature, then replay (a
  // signature seen before inside the window is kUnauthenticated). A valid signature is
  // remembered for the window.
  Status Verify(const RequestSignature& sig, std::string_view method, std::string_view path,
                std::string_view body_hash_hex);

 private:
  const std::set<PublicKey> keys_;
  const Clock& clock_;
  std::mutex mu_;
  std::unordered_set<std::string> seen_;
  std::deque<std::pair<int64_t, std::string>> seen_order_;  // (expiry ms, signature hex)
};

}  // namespace dmoe

#endif  // DMOE_CORE_REQUEST_AUTH_H_
