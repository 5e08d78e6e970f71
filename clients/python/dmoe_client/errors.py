"""The exceptions of dmoe_client: every error the package raises is a DmoeError.

- SafetensorsError: a blob breaks a rule of PROTOCOL section 2 (decoding), or a value cannot be
  encoded; also a ValueError.
- ServerError: a server or router answered with a PROTOCOL section 3 error body; `code` and
  `message` are the server's own, `http_status` the status, `retry_after` its Retry-After seconds.
- ProofError: an endpoint did not prove the key it should hold (section 4).
- ProtocolError: an answer that breaks the contract (not JSON, too large, missing fields).
- TransportError: the server could not be reached or the connection broke; also a ConnectionError.
"""


class DmoeError(Exception):
    """The base of every error this package raises."""


class SafetensorsError(DmoeError, ValueError):
    """A safetensors blob or tensor that the protocol refuses; the message names the rule."""


class ServerError(DmoeError):
    """An error answer of a dmoe server: `code` is a PROTOCOL section 3 code name."""

    def __init__(self, code, message, http_status=None, retry_after=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after


class ProofError(DmoeError):
    """An endpoint answered a challenge without a valid proof of the expected key."""


class ProtocolError(DmoeError):
    """An answer that does not follow the wire contract."""


class TransportError(DmoeError, ConnectionError):
    """The connection failed: refused, reset, timed out."""
