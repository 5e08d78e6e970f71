"""Router: a dmoe-router's inference, generation, models and swarm view (PROTOCOL section 5)."""

import json
import time

import numpy as np
import requests

from dmoe_client import _http, safetensors
from dmoe_client.errors import ProtocolError, ServerError, TransportError

# A Server-Sent Events line longer than this is refused (a piece of text is a few bytes).
MAX_EVENT_BYTES = 1 << 20


class Generation(_http.Closing):
    """The pieces of a streamed generation, as an iterator of str.

    Once exhausted, `finish_reason`, `usage` and `model_version` hold the last event's fields and
    `text` the pieces joined. A generation that fails after some text raises ServerError with the
    router's code and message (PROTOCOL: finish_reason "error").
    """

    def __init__(self, response):
        self._response = response
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = b""
        self.text = ""
        self.finish_reason = None
        self.usage = None
        self.model_version = None

    def __iter__(self):
        return self

    def __next__(self):
        while self.finish_reason is None:
            event = self._next_event()
            if event is None:
                self.close()
                raise ProtocolError("the generation stream ended without a finish_reason")
            piece = event.get("text") if isinstance(event, dict) else None
            if not isinstance(piece, str):
                raise ProtocolError(f"a generation event without text: {event!r}")
            if "finish_reason" in event:
                self.finish_reason = event["finish_reason"]
                self.usage = event.get("usage")
                self.model_version = event.get("model_version")
                self.close()
                if self.finish_reason == "error":
                    error = event.get("error")
                    error = error if isinstance(error, dict) else {}
                    raise ServerError(str(error.get("code", "internal")), str(error.get("message", "")))
            self.text += piece
            if piece:
                return piece
        raise StopIteration

    def _next_line(self):
        """The next line of the stream (without its newline), or None at its end."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_EVENT_BYTES:
                self.close()
                raise ProtocolError(f"an event line longer than {MAX_EVENT_BYTES} bytes")
            try:
                chunk = next(self._chunks, None)
            except requests.RequestException as e:
                raise TransportError(f"reading the generation stream: {e}") from None
            if chunk is None:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.rstrip(b"\r")

    def _next_event(self):
        while (line := self._next_line()) is not None:
            if line.startswith(b"data:"):
                return _http.parse_json(line[5:].strip(), "the generation stream")
        return None

    def close(self):
        """Ends the stream early; the router stops the generation at its next step."""
        self._response.close()


class Router(_http.Closing):
    """A dmoe-router at `url` ("http://host:port" or "host:port")."""

    @property
    def peer_id(self):
        """The peer id the router proved (a challenge is sent the first time)."""
        return self._proven.peer_id(self._session)

    def __init__(self, url, identity=None, peer_id=None, timeout=60.0):
        """`identity` signs publications (for a router run with --trainer-keys); they name the peer
        id the router proves with GET /v1/health?challenge= (`peer_id`, when given, must be it)."""
        self.url = _http.normalize_endpoint(url)
        self.identity = identity
        self.timeout = timeout
        self._session = requests.Session()
        self._proven = _http.ProvenKey(self.url, expected_peer_id=peer_id)

    def models(self):
        """The published models: a list of {"name", "version", "spec", ...}."""
        return self._get("/v1/models")["models"]

    def swarm(self):
        """The router's view of the swarm: {"experts": [...], "peers": [...], "models": [...]}."""
        return self._get("/v1/swarm")

    def infer(self, model, x):
        """The model's outputs (logits) for inputs x [B, input_dim], as float32 numpy."""
        body = safetensors.encode({"x": np.asarray(x, dtype=np.float32)})
        _, answer = _http.request(self._session, "POST", f"{self.url}/v1/models/{model}/infer",
                                  data=body, headers={"Content-Type": _http.SAFETENSORS},
                                  timeout=self.timeout)
        tensors, _ = safetensors.decode(answer)
        if "y" not in tensors:
            raise ProtocolError(f"{model}: the inference answer holds no tensor 'y'")
        return tensors["y"]

    def generate(self, model, prompt, stream=False, **params):
        """Text from a token model. `params`: max_tokens, temperature, top_k, top_p, seed, stop.

        stream=False returns the router's JSON answer ({"text", "finish_reason", "usage",
        "model_version"}); stream=True returns a Generation, an iterator of the pieces of text.
        """
        body = dict(params, prompt=prompt, stream=bool(stream))
        url = f"{self.url}/v1/models/{model}/generate"
        kwargs = {"data": json.dumps(body).encode("utf-8"),
                  "headers": {"Content-Type": "application/json"}, "timeout": self.timeout}
        if not stream:
            _, answer = _http.request(self._session, "POST", url, **kwargs)
            return _http.parse_json(answer, url)
        try:
            response = self._session.post(url, stream=True, **kwargs)
        except requests.RequestException as e:
            raise TransportError(f"POST {url}: {e}") from None
        if response.status_code >= 400:
            raise _http.server_error(response.status_code,
                                     _http.read_limited(response, _http.MAX_ERROR_BYTES),
                                     response.headers.get("Retry-After"))
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.close()
            raise ProtocolError(f"{url} answered {response.headers.get('Content-Type')!r}, "
                                "not text/event-stream")
        return Generation(response)

    def publish(self, spec, state, version=None):
        """PUT /v1/models/{spec["name"]}: publishes a model spec with its state dict (name -> array).

        `version` defaults to the current unix milliseconds, as dmoe-train uses. Signed (dmoe-req-v2
        for the router's proven peer id) when the Router has an identity. Returns the router's
        answer {"name", "version"}.
        """
        version = int(time.time() * 1000) if version is None else int(version)
        body = safetensors.encode(state, {"spec": json.dumps(spec), "version": str(version)})
        path = f"/v1/models/{spec['name']}"
        headers = {"Content-Type": _http.SAFETENSORS}
        if self.identity is not None:
            headers.update(self.identity.sign_request(self.peer_id, "PUT", path, body))
        _, answer = _http.request(self._session, "PUT", self.url + path, data=body, headers=headers,
                                  timeout=self.timeout)
        return _http.parse_json(answer, "model publication")

    def close(self):
        self._session.close()

    def _get(self, path):
        return _http.get_json(self._session, self.url + path, timeout=self.timeout)
