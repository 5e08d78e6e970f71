// Identity: an Ed25519 key pair (libsodium), BLAKE2b-256, and the peer id of PROTOCOL section 1.
//
// An identity file holds the 32-byte seed as 64 lowercase hex characters and a newline, mode 0600.
// LoadOrCreateIdentity creates it when missing and refuses one that group or others may read.
// Identity objects are immutable after creation and safe to share between threads.
#ifndef DMOE_CORE_IDENTITY_H_
#define DMOE_CORE_IDENTITY_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe {

using Hash256 = std::array<uint8_t, 32>;
using PublicKey = std::array<uint8_t, 32>;
using Signature = std::array<uint8_t, 64>;

// Initializes libsodium once; every function below calls it, so callers need not.
void EnsureSodiumInitialized();

Hash256 Blake2b256(std::span<const uint8_t> data);
Hash256 Blake2b256(std::string_view data);

// Ed25519 signature check; false for any mismatch.
bool VerifySignature(const PublicKey& key, std::span<const uint8_t> message, const Signature& sig);
bool VerifySignature(const PublicKey& key, std::string_view message, const Signature& sig);

// Hex forms (64 and 128 lowercase characters); parsing refuses any other length or character.
std::string PublicKeyToHex(const PublicKey& key);
Result<PublicKey> PublicKeyFromHex(std::string_view hex);
std::string SignatureToHex(const Signature& sig);
Result<Signature> SignatureFromHex(std::string_view hex);

// peer_id = lowercase hex of BLAKE2b-256(public key).
std::string PeerIdOf(const PublicKey& key);

class Identity {
 public:
  // A fresh random key pair.
  static Identity Generate();
  // The key pair of a 32-byte seed (deterministic; used by tests and by the identity file).
  static Identity FromSeed(std::span<const uint8_t, 32> seed);

  const PublicKey& public_key() const { return public_key_; }
  std::string public_key_hex() const { return PublicKeyToHex(public_key_); }
  // BLAKE2b-256 of the public key, in hex.
  std::string peer_id() const { return PeerIdOf(public_key_); }
  Hash256 id() const;

  Signature Sign(std::span<const uint8_t> message) const;
  Signature Sign(std::string_view message) const;

  // Writes the seed file (64 hex + "\n") with mode 0600, atomically (temp file + rename).
  Status SaveToFile(const std::string& path) const;

 private:
  Identity() = default;
  std::array<uint8_t, 32> seed_{};
  std::array<uint8_t, 64> secret_key_{};
  PublicKey public_key_{};
};

// Reads an identity file. kPermissionDenied when the file is readable by group or others,
// kNotFound when missing, kInvalidArgument when its contents are not 64 hex characters.
Result<Identity> LoadIdentity(const std::string& path);
// As LoadIdentity, but creates a new identity at `path` when the file does not exist.
Result<Identity> LoadOrCreateIdentity(const std::string& path);

}  // namespace dmoe

#endif  // DMOE_CORE_IDENTITY_H_
