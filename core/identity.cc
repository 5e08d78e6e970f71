#include "core/identity.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/hex.h"

namespace dmoe {
namespace {

template <size_t N>
Result<std::array<uint8_t, N>> FixedFromHex(std::string_view hex, std::string_view what) {
  if (hex.size() != 2 * N) {
    return InvalidArgumentError(std::string(what) + " must be " + std::to_string(2 * N) +
                                " hex characters, got " + std::to_string(hex.size()));
  }
  DMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, HexDecode(hex));
  std::array<uint8_t, N> out;
  std::memcpy(out.data(), bytes.data(), N);
  return out;
}

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

void EnsureSodiumInitialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) std::abort();  // libsodium cannot work at all; nothing to recover.
  });
}

Hash256 Blake2b256(std::span<const uint8_t> data) {
  EnsureSodiumInitialized();
  Hash256 out;
  crypto_generichash(out.data(), out.size(), data.data(), data.size(), nullptr, 0);
  return out;
}

Hash256 Blake2b256(std::string_view data) { return Blake2b256(AsBytes(data)); }

bool VerifySignature(const PublicKey& key, std::span<const uint8_t> message, const Signature& sig) {
  EnsureSodiumInitialized();
  return crypto_sign_verify_detached(sig.data(), message.data(), message.size(), key.data()) == 0;
}

bool VerifySignature(const PublicKey& key, std::string_view message, const Signature& sig) {
  return VerifySignature(key, AsBytes(message), sig);
}

std::string PublicKeyToHex(const PublicKey& key) { return HexEncode(key); }
Result<PublicKey> PublicKeyFromHex(std::string_view hex) {
  return FixedFromHex<32>(hex, "public key");
}
std::string SignatureToHex(const Signature& sig) { return HexEncode(sig); }
Result<Signature> SignatureFromHex(std::string_view hex) {
  return FixedFromHex<64>(hex, "signature");
}

std::string PeerIdOf(const PublicKey& key) { return HexEncode(Blake2b256(key)); }

Identity Identity::Generate() {
  EnsureSodiumInitialized();
  std::array<uint8_t, 32> seed;
  randombytes_buf(seed.data(), seed.size());
  Identity id = FromSeed(seed);
  sodium_memzero(seed.data(), seed.size());
  return id;
}

Identity Identity::FromSeed(std::span<const uint8_t, 32> seed) {
  EnsureSodiumInitialized();
  Identity id;
  std::memcpy(id.seed_.data(), seed.data(), 32);
  crypto_sign_seed_keypair(id.public_key_.data(), id.secret_key_.data(), id.seed_.data());
  return id;
}

Hash256 Identity::id() const { return Blake2b256(public_key_); }

Signature Identity::Sign(std::span<const uint8_t> message) const {
  Signature sig;
  crypto_sign_detached(sig.data(), nullptr, message.data(), message.size(), secret_key_.data());
  return sig;
}

Signature Identity::Sign(std::string_view message) const { return Sign(AsBytes(message)); }

Status Identity::SaveToFile(const std::string& path) const {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return PermissionDeniedError("cannot create identity file " + tmp + ": " +
                                 std::strerror(errno));
  }
  // open() honours the umask; make the mode exactly 0600 whatever it is.
  ::fchmod(fd, 0600);
  std::string text = HexEncode(seed_) + "\n";
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return InternalError("cannot write identity file " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

Result<Identity> LoadIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return NotFoundError("identity file " + path + " does not exist");
    return PermissionDeniedError("cannot stat identity file " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgumentError("identity file " + path + " is not a regular file");
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDeniedError("identity file " + path + " has mode " + mode +
                                 " and may be read by others; run 'chmod 600 " + path + "'");
  }
  std::ifstream in(path);
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  if (text.size() > 1000) {
    return InvalidArgumentError("identity file " + path +
                                " is not 64 hex characters and a newline");
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  auto seed = FixedFromHex<32>(text, "identity file " + path);
  if (!seed.ok()) return seed.status();
  for (char c : text) {
    if (c >= 'A' && c <= 'F') {
      return InvalidArgumentError("identity file " + path + " must hold lowercase hex");
    }
  }
  return Identity::FromSeed(*seed);
}

Result<Identity> LoadOrCreateIdentity(const std::string& path) {
  Result<Identity> loaded = LoadIdentity(path);
  if (loaded.ok() || loaded.status().code() != Code::kNotFound) return loaded;
  Identity fresh = Identity::Generate();
  DMOE_RETURN_IF_ERROR(fresh.SaveToFile(path));
  return fresh;
}

}  // namespace dmoe
