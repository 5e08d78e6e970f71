"""Identities, signed requests and endpoint proofs (PROTOCOL sections 1 and 4).

An identity file holds a 32-byte Ed25519 seed as 64 lowercase hex characters and a newline, mode
0600: the files `dmoe keygen --out FILE` writes and `--identity FILE` of every dmoe process reads.
`Identity.load` refuses a file that group or others may read, as the C++ tools do.

`sign_request` produces the four X-DMoE-* headers of a dmoe-req-v2 request for one server (named by
its peer id); `verify_proof` checks a server's answer to `GET /v1/health?challenge=`.
"""

import os
import secrets
import stat
import time

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.signing

from dmoe_client.errors import DmoeError

REQUEST_SIGNING_VERSION = "dmoe-req-v2"
PROOF_VERSION = "dmoe-proof-v1"


def blake2b256(data):
    return nacl.hash.blake2b(bytes(data), digest_size=32, encoder=nacl.encoding.RawEncoder)


def peer_id_of(public_key):
    """peer_id = lowercase hex of BLAKE2b-256(public key), `public_key` the 32 raw bytes."""
    return blake2b256(public_key).hex()


def _is_lower_hex(s, chars):
    return isinstance(s, str) and len(s) == chars and all(c in "0123456789abcdef" for c in s)


class Identity:
    """An Ed25519 key pair. Immutable; safe to share between threads."""

    def __init__(self, seed):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise DmoeError("an identity seed is 32 bytes")
        self._key = nacl.signing.SigningKey(bytes(seed))
        self.public_key = bytes(self._key.verify_key)
        self.public_key_hex = self.public_key.hex()
        self.peer_id = peer_id_of(self.public_key)

    @classmethod
    def generate(cls):
        return cls(secrets.token_bytes(32))

    @classmethod
    def load(cls, path):
        """Reads an identity file; DmoeError when it is missing, readable by others or malformed."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DmoeError(f"identity file {path} does not exist") from None
        except OSError as e:
            raise DmoeError(f"cannot stat identity file {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DmoeError(f"identity file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise DmoeError(f"identity file {path} has mode {stat.S_IMODE(st.st_mode):04o} and may be "
                            f"read by others; run 'chmod 600 {path}'")
        with open(path, "rb") as f:
            raw = f.read(1001)
        text = raw.decode("ascii", errors="replace").rstrip("\r\n")
        if len(raw) > 1000 or not _is_lower_hex(text, 64):
            raise DmoeError(f"identity file {path} must hold 64 lowercase hex characters and a newline")
        return cls(bytes.fromhex(text))

    def save(self, path):
        """Writes the seed file with mode 0600 (the file must not exist)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bytes(self._key).hex() + "\n")

    def sign(self, message):
        """The 64-byte Ed25519 signature of `message` (bytes or str, UTF-8)."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        return self._key.sign(message).signature

    def sign_request(self, server_peer_id, method, path, body=b"", now_ms=None, nonce_hex=None):
        """The X-DMoE-* headers of a dmoe-req-v2 request meant for the server `server_peer_id`.

        `path` is the request target without its query string; a WebSocket upgrade signs an empty
        body. A fresh random nonce is drawn unless `nonce_hex` is given.
        """
        timestamp = str(int(time.time() * 1000) if now_ms is None else now_ms)
        nonce = nonce_hex if nonce_hex is not None else secrets.token_hex(16)
        message = "\n".join([REQUEST_SIGNING_VERSION, server_peer_id, method, path, timestamp, nonce,
                             blake2b256(body).hex()])
        return {
            "X-DMoE-Key": self.public_key_hex,
            "X-DMoE-Timestamp": timestamp,
            "X-DMoE-Nonce": nonce,
            "X-DMoE-Signature": self.sign(message).hex(),
        }


def new_challenge():
    """A fresh challenge: 32 random bytes as 64 lowercase hex characters."""
    return secrets.token_hex(32)


def verify_proof(public_key_hex, challenge_hex, proof_hex):
    """True when `proof_hex` is the signature of public_key_hex's key over its peer id and challenge."""
    if not (_is_lower_hex(public_key_hex, 64) and _is_lower_hex(challenge_hex.lower(), 64)
            and isinstance(proof_hex, str) and len(proof_hex) == 128):
        return False
    try:
        key = bytes.fromhex(public_key_hex)
        signature = bytes.fromhex(proof_hex)
        message = f"{PROOF_VERSION}\n{peer_id_of(key)}\n{challenge_hex.lower()}".encode()
        nacl.signing.VerifyKey(key).verify(message, signature)
        return True
    except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError):
        return False
