"""HTTP plumbing shared by RemoteExpert and Router: bounded reads, error bodies, endpoint proofs."""

import json
import time

import requests

from dmoe_client.errors import ProofError, ProtocolError, ServerError, TransportError
from dmoe_client.identity import new_challenge, peer_id_of, verify_proof

SAFETENSORS = "application/x-safetensors"
# Answers larger than this are refused: an expert answers in the dtype and shape of its request,
# which the server's default body limit keeps under 64 MiB, so 256 MiB leaves room for any flags.
MAX_ANSWER_BYTES = 256 << 20
# What the C++ gating reads of a proof answer (PROTOCOL section 4).
MAX_PROOF_BYTES = 16 << 10
MAX_ERROR_BYTES = 64 << 10
# A proven key is trusted this long, as the gating client does.
PROOF_TTL_S = 600.0


class Closing:
    """`with X(...) as x:` calls x.close() at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def normalize_endpoint(endpoint):
    """'127.0.0.1:8080' or 'http://127.0.0.1:8080/' -> 'http://127.0.0.1:8080'."""
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError("an endpoint is a non-empty string such as http://127.0.0.1:8080")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {endpoint!r} must be http:// or https://")
    return endpoint.rstrip("/")


def read_limited(response, limit):
    """The body of a streamed `response`, refusing one longer than `limit` bytes."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        response.close()
        raise ProtocolError(f"answer of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(chunk_size=1 << 16):
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"answer exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except requests.RequestException as e:
        raise TransportError(f"reading the answer of {response.url}: {e}") from None
    finally:
        response.close()
    return b"".join(chunks)


def server_error(status, body, retry_after=None):
    """The ServerError of a PROTOCOL section 3 error body (or ProtocolError when it is not one)."""
    try:
        error = json.loads(body)["error"]
        code, message = error["code"], error["message"]
        if not isinstance(code, str) or not isinstance(message, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        snippet = body[:200].decode("utf-8", errors="replace")
        return ProtocolError(f"HTTP {status} without a dmoe error body: {snippet!r}")
    seconds = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return ServerError(code, message, http_status=status, retry_after=seconds)


def request(session, method, url, limit=MAX_ANSWER_BYTES, timeout=30.0, **kwargs):
    """Sends a request; returns (response, body) for 2xx, raises ServerError for an error answer."""
    try:
        response = session.request(method, url, stream=True, timeout=timeout, **kwargs)
    except requests.RequestException as e:
        raise TransportError(f"{method} {url}: {e}") from None
    if response.status_code >= 400:
        body = read_limited(response, MAX_ERROR_BYTES)
        raise server_error(response.status_code, body, response.headers.get("Retry-After"))
    return response, read_limited(response, limit)


def get_json(session, url, limit=MAX_ANSWER_BYTES, timeout=30.0, **kwargs):
    _, body = request(session, "GET", url, limit=limit, timeout=timeout, **kwargs)
    return parse_json(body, url)


def parse_json(body, what):
    try:
        return json.loads(body)
    except ValueError as e:
        raise ProtocolError(f"{what} answered JSON that does not parse: {e}") from None


class ProvenKey:
    """The key an endpoint proved with `GET /v1/health?challenge=`, refreshed after 10 minutes.

    `expected_peer_id`, when given (from the DHT record the endpoint came from, or out of band), is
    the only peer id accepted; otherwise the first key the endpoint proves is trusted.
    """

    def __init__(self, endpoint, expected_peer_id=None, timeout=2.0):
        self.endpoint = endpoint
        self.expected_peer_id = expected_peer_id
        self.timeout = timeout
        self._peer_id = None
        self._proven_at = 0.0

    def peer_id(self, session):
        if self._peer_id is None or time.monotonic() - self._proven_at > PROOF_TTL_S:
            self._peer_id = self._prove(session)
            self._proven_at = time.monotonic()
        return self._peer_id

    def _prove(self, session):
        challenge = new_challenge()
        url = f"{self.endpoint}/v1/health"
        health = get_json(session, url, limit=MAX_PROOF_BYTES, timeout=self.timeout,
                          params={"challenge": challenge})
        key = health.get("public_key") if isinstance(health, dict) else None
        proof = health.get("proof") if isinstance(health, dict) else None
        if not verify_proof(key, challenge, proof):
            raise ProofError(f"{self.endpoint} answered the challenge without a valid proof")
        peer_id = peer_id_of(bytes.fromhex(key))
        if health.get("peer_id") != peer_id:
            raise ProofError(f"{self.endpoint} names peer id {health.get('peer_id')!r} but proved key "
                             f"{key} (peer id {peer_id})")
        if self.expected_peer_id is not None and peer_id != self.expected_peer_id:
            raise ProofError(f"{self.endpoint} proved peer id {peer_id}, not the expected "
                             f"{self.expected_peer_id}")
        return peer_id
