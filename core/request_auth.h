// Signed requests (PROTOCOL section 4, "Who may train") and endpoint proofs ("Endpoints prove
// their key").
//
// A trainer signs, for one server,
//   "dmoe-req-v2\n" + SERVER_PEER_ID + "\n" + METHOD + "\n" + PATH + "\n" + TIMESTAMP + "\n" +
//   NONCE + "\n" + hex(BLAKE2b-256(body))
// with its Ed25519 key and sends X-DMoE-Key, X-DMoE-Timestamp, X-DMoE-Nonce and X-DMoE-Signature.
// SERVER_PEER_ID is the peer id of the server the request is meant for (the publisher of the DHT
// record the client used, or the router's /v1/health peer_id), so a request captured by one server
// is refused by every other; NONCE is 16 random bytes in hex, so two requests never sign the same
// string. A server (or router) that runs with --trainer-keys checks them before it parses the body.
//
// A server proves that it holds the key that announced its endpoint by signing a client's fresh
// challenge: "dmoe-proof-v1\n" + PEER_ID + "\n" + CHALLENGE (64 lowercase hex characters).
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
inline constexpr char kNonceHeader[] = "X-DMoE-Nonce";
inline constexpr char kSignatureHeader[] = "X-DMoE-Signature";
inline constexpr int64_t kRequestWindowMs = 30'000;
inline constexpr size_t kNonceHexChars = 32;

// The header values of a signed request.
struct RequestSignature {
  std::string key_hex;
  std::string timestamp_ms;
  std::string nonce_hex;
  std::string signature_hex;
};

// The exact bytes that are signed. `server_peer_id` is the target's peer id (64 lowercase hex);
// `path` is the request target without its query string; `body_hash_hex` is
// hex(BLAKE2b-256(body)), of the empty body for a WebSocket upgrade.
std::string RequestSigningString(std::string_view server_peer_id, std::string_view method,
                                 std::string_view path, std::string_view timestamp_ms,
                                 std::string_view nonce_hex, std::string_view body_hash_hex);

// Signs a request for the server `server_peer_id` at `now_unix_ms`, with a fresh random nonce.
RequestSignature SignRequest(const Identity& identity, std::string_view server_peer_id,
                             std::string_view method, std::string_view path,
                             std::span<const uint8_t> body, int64_t now_unix_ms);

// Checks signed requests meant for one server against a set of trainer keys. Thread-safe.
class RequestVerifier {
 public:
  // `server_peer_id` is the verifying server's own peer id: signatures for any other are refused.
  RequestVerifier(std::set<PublicKey> trainer_keys, std::string server_peer_id, const Clock& clock);

  // Reads a key file: one hex Ed25519 public key a line; blank lines and lines starting with '#'
  // are ignored. kInvalidArgument naming the line for anything else.
  static Result<std::set<PublicKey>> LoadKeyFile(const std::string& path);

  // Checks what can be checked before the body is read: headers present and well formed (else
  // kUnauthenticated; a request without X-DMoE-Nonce is a version-1 signature, refused naming
  // v2), key listed (else kPermissionDenied), timestamp within 30 s of the clock (else
  // kUnauthenticated).
  Status CheckHead(const RequestSignature& sig) const;

  // The full check, once the body's hash is known: CheckHead, then the signature over this
  // server's peer id, then replay (a nonce or a signature seen before inside the window is
  // kUnauthenticated). A valid request is remembered for the window.
  Status Verify(const RequestSignature& sig, std::string_view method, std::string_view path,
                std::string_view body_hash_hex);

  const std::string& server_peer_id() const { return server_peer_id_; }

 private:
  const std::set<PublicKey> keys_;
  const std::string server_peer_id_;
  const Clock& clock_;
  std::mutex mu_;
  std::unordered_set<std::string> seen_;                    // "n:" key nonce, "s:" signature
  std::deque<std::pair<int64_t, std::string>> seen_order_;  // (expiry ms, entry of seen_)
};

// Caps how many proofs a server signs per second, so that a flood of challenges costs it a bounded
// share of a core (an Ed25519 signature each); honest clients send one per endpoint and key every
// few minutes. Thread-safe.
class ProofRateLimiter {
 public:
  explicit ProofRateLimiter(int per_second = 2000) : per_second_(per_second) {}
  // True when one more proof fits in the second of `now_ms`.
  bool Allow(int64_t now_ms);

 private:
  const int per_second_;
  std::mutex mu_;
  int64_t second_ = -1;
  int used_ = 0;
};

// Endpoint proofs. A challenge is 32 random bytes, sent as 64 lowercase hex characters.
inline constexpr size_t kChallengeHexChars = 64;
std::string NewChallengeHex();
// Whether `hex` is a well-formed challenge (exactly 64 hex characters, either case).
bool IsChallengeHex(std::string_view hex);
// "dmoe-proof-v1\n" + peer_id + "\n" + lower-case challenge.
std::string ProofSigningString(std::string_view peer_id, std::string_view challenge_hex);
// The proof a server answers: hex signature of ProofSigningString(its peer id, challenge).
std::string SignProof(const Identity& identity, std::string_view challenge_hex);
// True when `proof_hex` is `key`'s signature over `challenge_hex` for the peer id of `key`.
bool VerifyProof(const PublicKey& key, std::string_view challenge_hex, std::string_view proof_hex);

}  // namespace dmoe

#endif  // DMOE_CORE_REQUEST_AUTH_H_
