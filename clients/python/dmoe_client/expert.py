"""RemoteExpert: one expert of one dmoe-server, over HTTP and over a WebSocket (PROTOCOL section 4).

Before its first request (and again every 10 minutes) a RemoteExpert sends the endpoint a fresh
challenge and checks the proof: the server must hold the key whose peer id it names, and, when
`peer_id=` is given (the publisher of the DHT record the endpoint came from), that very key. A
request signed with `identity` names the proven peer id, so it is valid at that server only.

`forward` and `backward` are one HTTP request each. `forward_many` and `backward_many` send their
requests over one WebSocket, with up to `max_in_flight` (the server's default limit, 64) in flight at
once, matched to their answers by request id (answers may come out of order). The WebSocket is
opened on first use, signed when an identity is given (needed for backward on a server with
--trainer-keys), and kept until `close()`.

An error answer raises ServerError with the server's code and message; on the WebSocket a refused
upgrade carries no body, so its code is the one of its HTTP status (401 unauthenticated, ...).
A RemoteExpert may be used from several threads: requests over the WebSocket take turns.
"""

import itertools
import threading

import numpy as np
import requests
import websocket

from dmoe_client import _http, safetensors
from dmoe_client.errors import ProtocolError, ServerError, TransportError

_CODE_OF_STATUS = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                   404: "not_found", 413: "payload_too_large", 415: "unsupported_media_type",
                   429: "resource_exhausted", 500: "internal", 503: "unavailable",
                   504: "deadline_exceeded"}


class RemoteExpert(_http.Closing):
    """An expert `uid` at `endpoint` ("http://host:port" or "host:port")."""

    def __init__(self, endpoint, uid, identity=None, peer_id=None, timeout=30.0, max_in_flight=64,
                 max_answer_bytes=_http.MAX_ANSWER_BYTES):
        self.endpoint = _http.normalize_endpoint(endpoint)
        if not isinstance(uid, str) or not uid:
            raise ValueError("uid is a non-empty string such as 'ffn.0.3'")
        if not 1 <= int(max_in_flight) <= 4096:
            raise ValueError("max_in_flight must be in 1..4096")
        self.uid = uid
        self.identity = identity
        self.timeout = timeout
        self.max_in_flight = int(max_in_flight)
        # An answer (HTTP body, or WebSocket message) larger than this raises ProtocolError.
        self.max_answer_bytes = int(max_answer_bytes)
        # The expert's optimizer step reported by the latest answer.
        self.last_step = None
        self._session = requests.Session()
        self._proven = _http.ProvenKey(self.endpoint, expected_peer_id=peer_id)
        self._ws = None
        self._ws_lock = threading.Lock()
        self._ids = itertools.count()

    @property
    def peer_id(self):
        """The peer id the endpoint proved (a challenge is sent the first time)."""
        return self._proven.peer_id(self._session)

    def info(self):
        """GET /v1/experts/{uid}: type, hidden_dim, inputs, outputs, step, params, dtype."""
        self.peer_id  # proves the endpoint before talking to it
        return _http.get_json(self._session, f"{self.endpoint}/v1/experts/{self.uid}",
                              timeout=self.timeout)

    def forward(self, x, dtype=None):
        """y for x [B, d] (or [B, T, d]).

        x travels in its own dtype (float32 or float16; float64 is sent as float32, as the server
        takes F32, F16 and BF16), and y comes back in it; `dtype="BF16"` sends float x as bfloat16.
        """
        return self._call("forward", _as_sent({"x": x}), dtype, "y")

    def backward(self, x, grad_y, step_seen=None, dtype=None):
        """grad_x for x and grad_y; the server's optimizer steps. Signed when an identity is set."""
        metadata = {} if step_seen is None else {"step_seen": str(int(step_seen))}
        return self._call("backward", _as_sent({"x": x, "grad_y": grad_y}), dtype, "grad_x", metadata)

    def forward_many(self, xs, dtype=None):
        """The y of every x in `xs`, sent over the WebSocket with many requests in flight."""
        return self._many("forward", [_as_sent({"x": x}) for x in xs], dtype, "y")

    def backward_many(self, pairs, dtype=None):
        """The grad_x of every (x, grad_y) in `pairs`, over the WebSocket; each one steps."""
        return self._many("backward", [_as_sent({"x": x, "grad_y": g}) for x, g in pairs], dtype,
                          "grad_x")

    def close(self):
        with self._ws_lock:
            if self._ws is not None:
                self._ws.close()
                self._ws = None
        self._session.close()

    # --- HTTP ---

    def _call(self, op, tensors, dtype, answer_name, metadata=None):
        body = safetensors.encode(tensors, metadata, _dtypes(tensors, dtype))
        path = f"/v1/experts/{self.uid}/{op}"
        headers = {"Content-Type": _http.SAFETENSORS}
        peer_id = self.peer_id
        if self.identity is not None and op == "backward":
            headers.update(self.identity.sign_request(peer_id, "POST", path, body))
        _, answer = _http.request(self._session, "POST", self.endpoint + path, data=body,
                                  headers=headers, timeout=self.timeout, limit=self.max_answer_bytes)
        return self._take(*safetensors.decode(answer), answer_name)

    def _take(self, tensors, metadata, name):
        """The tensor `name` of an answer; notes the expert's step."""
        if name not in tensors:
            raise ProtocolError(f"{self.uid}: the answer holds no tensor {name!r}")
        step = metadata.get("step", "")
        self.last_step = int(step) if step.isdigit() else None
        return tensors[name]

    # --- WebSocket ---

    def _connect(self):
        url = "ws" + self.endpoint[len("http"):] + "/v1/ws"
        headers = []
        if self.identity is not None:
            signed = self.identity.sign_request(self.peer_id, "GET", "/v1/ws", b"")
            headers = [f"{k}: {v}" for k, v in signed.items()]
        else:
            self.peer_id  # proves the endpoint before talking to it
        try:
            ws = websocket.create_connection(url, header=headers, timeout=self.timeout)
        except websocket.WebSocketBadStatusException as e:
            code = _CODE_OF_STATUS.get(e.status_code, "internal")
            raise ServerError(code, f"WebSocket upgrade refused: {e}", http_status=e.status_code) from None
        except (OSError, websocket.WebSocketException) as e:
            raise TransportError(f"WebSocket {url}: {e}") from None
        # websocket-client reads a whole frame once its header is in: a frame buffer that refuses
        # a declared length past the limit keeps one frame from costing more than that.
        ws.frame_buffer = _LimitedFrameBuffer(ws._recv, True, self.max_answer_bytes)
        return ws

    def _receive(self):
        """One binary message, at most max_answer_bytes; answers pings, refuses text and close."""
        parts, size = [], 0
        while True:
            frame = self._ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_PING:
                self._ws.pong(frame.data)
                continue
            if frame.opcode == websocket.ABNF.OPCODE_PONG:
                continue
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("the server closed the WebSocket")
            if frame.opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT):
                raise ProtocolError(f"{self.uid}: a WebSocket message that is not binary")
            size += len(frame.data)
            if size > self.max_answer_bytes:
                raise ProtocolError(f"a WebSocket answer exceeds the limit of {self.max_answer_bytes} bytes")
            parts.append(frame.data)
            if frame.fin:
                return b"".join(parts)

    def _many(self, op, requests_tensors, dtype, answer_name):
        results = [None] * len(requests_tensors)
        with self._ws_lock:
            if self._ws is None:
                self._ws = self._connect()
            try:
                self._exchange(op, requests_tensors, dtype, answer_name, results)
            except (OSError, websocket.WebSocketException, ProtocolError) as e:
                self._ws.close()
                self._ws = None
                if isinstance(e, ProtocolError):
                    raise
                raise TransportError(f"WebSocket to {self.endpoint}: {e}") from None
        return results

    def _exchange(self, op, requests_tensors, dtype, answer_name, results):
        """Sends the requests with at most max_in_flight unanswered; fills results by request id."""
        pending = {}
        errors = []
        sent = 0
        while sent < len(requests_tensors) or pending:
            while sent < len(requests_tensors) and len(pending) < self.max_in_flight:
                request_id = str(next(self._ids))
                tensors = requests_tensors[sent]
                metadata = {"id": request_id, "op": op, "uid": self.uid}
                self._ws.send_binary(safetensors.encode(tensors, metadata, _dtypes(tensors, dtype)))
                pending[request_id] = sent
                sent += 1
            tensors, metadata = safetensors.decode(self._receive())
            index = pending.pop(metadata.get("id"), None)
            if index is None:
                raise ProtocolError(f"{self.uid}: an answer with unknown id {metadata.get('id')!r}: "
                                    f"{metadata.get('error_code')} {metadata.get('error_message')}")
            if "error_code" in metadata:
                errors.append(ServerError(metadata["error_code"], metadata.get("error_message", "")))
                continue
            results[index] = self._take(tensors, metadata, answer_name)
        if errors:
            raise errors[0]


class _LimitedFrameBuffer(websocket._abnf.frame_buffer):
    """websocket-client's frame reader, refusing a frame whose declared length passes `limit`."""

    def __init__(self, recv_fn, skip_utf8_validation, limit):
        super().__init__(recv_fn, skip_utf8_validation)
        self._limit = limit

    def recv_length(self):
        super().recv_length()
        if self.length > self._limit:
            raise ProtocolError(f"a WebSocket frame of {self.length} bytes exceeds the limit of "
                                f"{self._limit}")


def _as_sent(tensors):
    """The request's arrays, float64 ones narrowed to float32 (the server takes F32, F16, BF16)."""
    out = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        out[name] = array.astype(np.float32) if array.dtype == np.float64 else array
    return out


def _dtypes(tensors, dtype):
    """The wire dtypes of a request: every float tensor as `dtype` when it is BF16."""
    if dtype is None:
        return None
    if dtype != "BF16":
        raise ValueError(f"dtype is None (the arrays' own) or 'BF16', got {dtype!r}")
    return {name: "BF16" for name, value in tensors.items() if np.asarray(value).dtype.kind == "f"}
