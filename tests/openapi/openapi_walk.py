"""Walks docs/openapi.yaml against running dmoe programs (ctest: openapi_walk).

openapi_walk_main.cc starts a dht, two expert servers (one with --trainer-keys) and a router, and
names in the JSON file $DMOE_OPENAPI_WALK their endpoints, the routes each logged ("net: serves
METHOD /pattern"), a trainer identity both key files list, and the publication body of the "shift"
model. This script checks:

1. the routes each program registers equal the operations the document gives its kind
   (x-dmoe-servers; "WEBSOCKET /p" is the GET /p marked x-dmoe-websocket): nothing undocumented,
   nothing documented that is missing;
2. every documented operation, on every kind of program that serves it, answers the requests of
   CASES below with the exact status each case expects, which must be one the operation documents,
   with a documented content type, and with a JSON body that validates against the documented
   schema (a small JSON Schema validator for the keywords the document uses); safetensors answers
   must decode. Each operation needs at least one answered success and one answered error per kind.

Runs on Debian's /usr/bin/python3 with python3-yaml, -requests, -websocket, -nacl and -numpy.
"""

import hashlib
import json
import os
import re
import secrets
import socket
import struct
import sys
import time
import urllib.parse

try:
    import nacl.signing
    import numpy as np
    import requests
    import websocket
    import yaml
except ImportError as e:
    sys.exit(f"openapi_walk: {e}: install Debian's python3-yaml, python3-requests, "
             "python3-websocket, python3-nacl and python3-numpy (scripts/setup does)")

DOC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                        "openapi.yaml")
TIMEOUT = 30
SUCCESS = "success"
ERROR = "error"


class WalkError(Exception):
    pass


# --- the document -------------------------------------------------------------------------------

def load_document():
    with open(DOC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve(doc, node):
    """Follows local $refs ("#/components/...") until a node without one."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise WalkError(f"only local $refs are supported, not {ref}")
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(doc):
    """(method, path) -> operation, for every operation of the document."""
    ops = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                ops[(method.upper(), path)] = op
    return ops


def documented_routes(ops, kind):
    """The routes a program of `kind` must register, as HttpServer::routes() names them."""
    routes = set()
    for (method, path), op in ops.items():
        if kind in op["x-dmoe-servers"]:
            routes.add(("WEBSOCKET" if op.get("x-dmoe-websocket") else method) + " " + path)
    return routes


# --- a JSON Schema validator for the keywords docs/openapi.yaml uses ----------------------------

JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
KNOWN_KEYWORDS = {
    "$ref", "type", "required", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf",
    "pattern", "minimum", "maximum", "exclusiveMinimum", "minItems", "maxItems", "minLength",
    "maxLength", "description", "format", "default", "examples",
}


def schema_errors(doc, schema, value, where="$"):
    schema = resolve(doc, schema)
    unknown = set(schema) - KNOWN_KEYWORDS
    if unknown:
        raise WalkError(f"the walk's validator does not know {sorted(unknown)} (at {where})")
    errors = []
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(JSON_TYPES[t](value) for t in types):
            return [f"{where}: {json.dumps(value)[:60]} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e18):
            errors.append(f"{where}: length {len(value)} is out of range")
    if JSON_TYPES["number"](value):
        if value < schema.get("minimum", -float("inf")) or value > schema.get("maximum", float("inf")):
            errors.append(f"{where}: {value} is out of range")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} is not above {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: '{name}' is missing")
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += schema_errors(doc, sub, value[name], f"{where}.{name}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e18):
            errors.append(f"{where}: {len(value)} items is out of range")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(doc, schema["items"], item, f"{where}[{i}]")
    for sub in schema.get("allOf", []):
        errors += schema_errors(doc, sub, value, where)
    if "anyOf" in schema and all(schema_errors(doc, s, value, where) for s in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema:
        matches = sum(not schema_errors(doc, s, value, where) for s in schema["oneOf"])
        if matches != 1:
            errors.append(f"{where}: matches {matches} of oneOf, not exactly one")
    return errors


# --- wire helpers -------------------------------------------------------------------------------

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}


def encode_safetensors(tensors, metadata=None):
    """tensors: name -> (dtype name, numpy array); metadata: str -> str."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def decode_safetensors(blob):
    """name -> numpy array, and the metadata; raises WalkError for a blob that does not decode."""
    if len(blob) < 8:
        raise WalkError(f"a safetensors answer of {len(blob)} bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=DTYPES[entry["dtype"]]).reshape(
            entry["shape"])
    return tensors, header.get("__metadata__", {})


class Answer:
    """One HTTP answer: status, headers (lower-case names) and body bytes."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def media_type(self):
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self):
        return json.loads(self.body)


def http(method, url, body=None, headers=None):
    r = requests.request(method, url, data=body, headers=headers or {}, timeout=TIMEOUT)
    return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def raw(url, request_head):
    """Sends `request_head` (bytes, no body) as is and reads the answer until the server closes or
    its Content-Length is in: for requests requests will not send (malformed, a declared body that
    never comes)."""
    parsed = urllib.parse.urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=TIMEOUT) as s:
        s.sendall(request_head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return Answer(status, headers, body)


def malformed(url, path):
    """A request whose Content-Length is not a number: 400 before routing, on every route."""
    return raw(url, f"GET {path} HTTP/1.1\r\nHost: walk\r\nContent-Length: nope\r\n\r\n".encode())


def declared_too_large(url, method, path, content_type, length):
    """A header declaring `length` body bytes that are never sent: refused unread (413)."""
    return raw(url, (f"{method} {path} HTTP/1.1\r\nHost: walk\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {length}\r\n\r\n").encode())


def upgrade_head(path, extra=""):
    key = secrets.token_bytes(16).hex()[:22] + "=="
    return (f"GET {path} HTTP/1.1\r\nHost: walk\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


class Signer:
    """A trainer identity signing requests (dmoe-req-v2) for one program's peer id."""

    def __init__(self, key):
        self.key = key

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="ascii") as f:
            return cls(nacl.signing.SigningKey(bytes.fromhex(f.read().strip())))

    @classmethod
    def stranger(cls):
        return cls(nacl.signing.SigningKey.generate())

    def headers(self, peer_id, method, path, body=b""):
        ts, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
        digest = hashlib.blake2b(body, digest_size=32).hexdigest()
        text = "\n".join(["dmoe-req-v2", peer_id, method, path, ts, nonce, digest])
        return {"X-DMoE-Key": self.key.verify_key.encode().hex(), "X-DMoE-Timestamp": ts,
                "X-DMoE-Nonce": nonce,
                "X-DMoE-Signature": self.key.sign(text.encode()).signature.hex()}


# --- the cases ----------------------------------------------------------------------------------

SAFETENSORS = "application/x-safetensors"
JSON_TYPE = {"Content-Type": "application/json"}
TINY_SPEC = {"name": "tiny", "input_dim": 2, "layers": [{"type": "linear", "out": 2}]}
TINY_WEIGHT = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
TINY_BIAS = np.array([0.5, -0.5], dtype=np.float32)


def tiny_model(version):
    return encode_safetensors({"layer0.weight": ("F32", TINY_WEIGHT), "layer0.bias": ("F32", TINY_BIAS)},
                              {"spec": json.dumps(TINY_SPEC), "version": str(version)})


def x_rows(rows, dim=256):
    return np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) / (rows * dim)


def expect(condition, message):
    if not condition:
        raise WalkError(message)


def ws_answer(ws):
    """The handshake answer of an open WebSocket, to check like any other."""
    return Answer(ws.getstatus(), {k.lower(): v for k, v in (ws.getheaders() or {}).items()}, b"")


def sse_events(answer):
    return [line[len("data: "):] for line in answer.body.decode().split("\n")
            if line.startswith("data: ")]


class Walk:
    def __init__(self, doc, config):
        self.doc, self.ops = doc, operations(doc)
        self.config = config
        self.trainer = Signer.from_file(config["trainer_identity"])
        self.covered = {}  # (op key, kind) -> set of SUCCESS / ERROR
        self.checked = 0
        self.failures = []

    def check(self, kind, method, pattern, name, expected, answer):
        """Checks one answer against the document and records what it covered."""
        op = self.ops.get((method, pattern))
        label = f"{method} {pattern} [{kind}] {name}"
        expect(op is not None, f"{label}: the document has no such operation")
        expect(kind in op["x-dmoe-servers"], f"{label}: the document does not give it to {kind}")
        expect(answer.status == expected,
               f"{label}: expected {expected}, got {answer.status} {answer.body[:300]!r}")
        documented = op["responses"].get(str(answer.status))
        expect(documented is not None,
               f"{label}: status {answer.status} is not documented ({sorted(op['responses'])})")
        documented = resolve(self.doc, documented)
        content = documented.get("content")
        if content:
            expect(answer.media_type in content,
                   f"{label}: content type '{answer.media_type}' is not documented for "
                   f"{answer.status} ({sorted(content)})")
            if answer.media_type == "application/json":
                errors = schema_errors(self.doc, content[answer.media_type]["schema"], answer.json())
                expect(not errors, f"{label}: the body does not match the document: {errors[:5]}")
            if answer.media_type == SAFETENSORS:
                decode_safetensors(answer.body)
        for header in documented.get("headers", {}):
            expect(header.lower() in answer.headers, f"{label}: the answer has no {header} header")
        self.covered.setdefault(((method, pattern), kind), set()).add(
            SUCCESS if answer.status < 400 else ERROR)
        self.checked += 1
        print(f"ok {answer.status} {label}", flush=True)
        return answer

    # Routes both kinds serve.
    def shared(self, kind, url):
        challenge = secrets.token_hex(32)
        a = self.check(kind, "GET", "/v1/health", "challenged", 200,
                       http("GET", f"{url}/v1/health?challenge={challenge}"))
        body = a.json()
        key = nacl.signing.VerifyKey(bytes.fromhex(body["public_key"]))
        key.verify(f"dmoe-proof-v1\n{body['peer_id']}\n{challenge}".encode(),
                   bytes.fromhex(body["proof"]))
        self.check(kind, "GET", "/v1/health", "plain", 200, http("GET", f"{url}/v1/health"))
        self.check(kind, "GET", "/v1/health", "malformed challenge", 400,
                   http("GET", f"{url}/v1/health?challenge=xyz"))
        m = self.check(kind, "GET", "/metrics", "scrape", 200, http("GET", f"{url}/metrics"))
        expect(b"# TYPE" in m.body, "metrics: no Prometheus TYPE line")
        self.check(kind, "GET", "/metrics", "malformed request", 400, malformed(url, "/metrics"))
        self.check(kind, "GET", "/v1/ws", "plain GET without an upgrade", 400,
                   http("GET", f"{url}/v1/ws"))
        return body["peer_id"]

    def expert(self, url, keyed):
        kind = "expert"
        peer_id = self.shared(kind, url)
        first = "ffn.2.0" if keyed else "ffn.0.0"
        listing = self.check(kind, "GET", "/v1/experts", "list", 200, http("GET", f"{url}/v1/experts"))
        expect(len(listing.json()["experts"]) == 8, f"{url}: expected 8 experts")
        self.check(kind, "GET", "/v1/experts", "malformed request", 400, malformed(url, "/v1/experts"))
        info = self.check(kind, "GET", "/v1/experts/{uid}", "hosted", 200,
                          http("GET", f"{url}/v1/experts/{first}")).json()
        expect(info["uid"] == first and info["hidden_dim"] == 256, f"info of {first}: {info}")
        self.check(kind, "GET", "/v1/experts/{uid}", "malformed uid", 400,
                   http("GET", f"{url}/v1/experts/ffn.01"))
        self.check(kind, "GET", "/v1/experts/{uid}", "not hosted", 404,
                   http("GET", f"{url}/v1/experts/ffn.9.9"))

        x = x_rows(3)
        body = encode_safetensors({"x": ("F32", x)})
        sf = {"Content-Type": SAFETENSORS}
        fwd = "/v1/experts/{uid}/forward"
        y = self.check(kind, "POST", fwd, "forward", 200,
                       http("POST", f"{url}/v1/experts/{first}/forward", body, sf))
        tensors, meta = decode_safetensors(y.body)
        expect(tensors["y"].shape == (3, 256) and meta["uid"] == first, f"forward answer {meta}")
        self.check(kind, "POST", fwd, "not hosted", 404,
                   http("POST", f"{url}/v1/experts/ffn.9.9/forward", body, sf))
        self.check(kind, "POST", fwd, "not safetensors", 400,
                   http("POST", f"{url}/v1/experts/{first}/forward", b"\x01\x02", sf))
        self.check(kind, "POST", fwd, "text/plain", 415,
                   http("POST", f"{url}/v1/experts/{first}/forward", body,
                        {"Content-Type": "text/plain"}))
        self.check(kind, "POST", fwd, "declared 65 MiB", 413,
                   declared_too_large(url, "POST", f"/v1/experts/{first}/forward", SAFETENSORS,
                                      65 << 20))

        bwd = "/v1/experts/{uid}/backward"
        path = f"/v1/experts/{first}/backward"
        grads = encode_safetensors({"x": ("F32", x), "grad_y": ("F32", np.ones_like(x))})
        signed = {**sf, **(self.trainer.headers(peer_id, "POST", path, grads) if keyed else {})}
        g = self.check(kind, "POST", bwd, "signed backward" if keyed else "backward", 200,
                       http("POST", url + path, grads, signed))
        expect(decode_safetensors(g.body)[0]["grad_x"].shape == (3, 256), "backward: grad_x shape")
        self.check(kind, "POST", bwd, "x without grad_y", 400,
                   http("POST", url + path, body, {**sf, **(
                       self.trainer.headers(peer_id, "POST", path, body) if keyed else {})}))
        if keyed:
            self.check(kind, "POST", bwd, "unsigned", 401, http("POST", url + path, grads, sf))
            self.check(kind, "POST", bwd, "signed by a key not listed", 403,
                       http("POST", url + path, grads,
                            {**sf, **Signer.stranger().headers(peer_id, "POST", path, grads)}))
        else:
            self.check(kind, "POST", bwd, "not hosted", 404,
                       http("POST", f"{url}/v1/experts/ffn.9.9/backward", grads, sf))

        # The WebSocket: a forward (and, on the keyed server, a backward on a signed upgrade).
        headers = self.trainer.headers(peer_id, "GET", "/v1/ws") if keyed else {}
        ws = websocket.create_connection(url.replace("http", "ws", 1) + "/v1/ws", timeout=TIMEOUT,
                                         header=[f"{k}: {v}" for k, v in headers.items()])
        try:
            op = "backward" if keyed else "forward"
            tensors = {"x": ("F32", x)}
            if keyed:
                tensors["grad_y"] = ("F32", np.ones_like(x))
            ws.send_binary(encode_safetensors(tensors, {"id": "walk-1", "op": op, "uid": first}))
            out, meta = decode_safetensors(ws.recv())
            expect(meta.get("id") == "walk-1" and meta.get("uid") == first and
                   ("grad_x" if keyed else "y") in out, f"WebSocket {op} answer: {meta}")
            self.check(kind, "GET", "/v1/ws", f"upgrade and {op}", 101,
                       ws_answer(ws))
        finally:
            ws.close()
        if keyed:
            self.check(kind, "GET", "/v1/ws", "upgrade with a key and no signature", 401,
                       raw(url, upgrade_head("/v1/ws", f"X-DMoE-Key: {'ab' * 32}\r\n")))

    def router(self, url):
        kind = "router"
        peer_id = self.shared(kind, url)
        for pattern in ("/", "/v1/swarm", "/v1/models", "/openai/v1/models"):
            self.check(kind, "GET", pattern, "malformed request", 400, malformed(url, pattern))
        page = self.check(kind, "GET", "/", "dashboard", 200, http("GET", f"{url}/"))
        expect(b"latency_ms" in page.body, "the dashboard does not read latency_ms")

        # Publications: shift (the token model the generation cases use) and tiny (a feature model).
        pub = "/v1/models/{name}"
        with open(self.config["shift_model"], "rb") as f:
            shift = f.read()
        sf = {"Content-Type": SAFETENSORS}

        def signed(path, body, signer=self.trainer):
            return {**sf, **signer.headers(peer_id, "PUT", path, body)}

        self.check(kind, "PUT", pub, "shift, signed", 200,
                   http("PUT", f"{url}/v1/models/shift", shift, signed("/v1/models/shift", shift)))
        version = int(time.time() * 1000)
        tiny = tiny_model(version)
        a = self.check(kind, "PUT", pub, "tiny, signed", 200,
                       http("PUT", f"{url}/v1/models/tiny", tiny, signed("/v1/models/tiny", tiny)))
        expect(a.json() == {"name": "tiny", "version": version}, f"publication answer {a.json()}")
        self.check(kind, "PUT", pub, "unsigned", 401, http("PUT", f"{url}/v1/models/tiny", tiny, sf))
        self.check(kind, "PUT", pub, "signed by a key not listed", 403,
                   http("PUT", f"{url}/v1/models/tiny", tiny,
                        signed("/v1/models/tiny", tiny, Signer.stranger())))
        self.check(kind, "PUT", pub, "the same version again", 400,
                   http("PUT", f"{url}/v1/models/tiny", tiny, signed("/v1/models/tiny", tiny)))
        self.check(kind, "PUT", pub, "text/plain", 415,
                   http("PUT", f"{url}/v1/models/tiny", tiny,
                        {**signed("/v1/models/tiny", tiny), "Content-Type": "text/plain"}))

        models = self.check(kind, "GET", "/v1/models", "list", 200, http("GET", f"{url}/v1/models"))
        expect(sorted(m["name"] for m in models.json()["models"]) == ["shift", "tiny"],
               f"models: {models.json()}")
        oa = self.check(kind, "GET", "/openai/v1/models", "list", 200,
                        http("GET", f"{url}/openai/v1/models"))
        expect([m["id"] for m in oa.json()["data"]] == ["shift"], f"openai models: {oa.json()}")

        infer = "/v1/models/{name}/infer"
        out = self.check(kind, "POST", infer, "JSON", 200,
                         http("POST", f"{url}/v1/models/tiny/infer",
                              json.dumps({"inputs": [[1.0, 1.0]]}), JSON_TYPE)).json()
        expect(out["outputs"] == [[3.5, 6.5]] and out["model_version"] == version,
               f"tiny's outputs: {out}")
        y = self.check(kind, "POST", infer, "safetensors", 200,
                       http("POST", f"{url}/v1/models/tiny/infer",
                            encode_safetensors({"x": ("F32", np.array([[1.0, 1.0]]))}), sf))
        expect(decode_safetensors(y.body)[0]["y"].tolist() == [[3.5, 6.5]], "tiny's y")
        self.check(kind, "POST", infer, "unknown model", 404,
                   http("POST", f"{url}/v1/models/nosuch/infer", '{"inputs": [[1, 1]]}', JSON_TYPE))
        self.check(kind, "POST", infer, "a token model", 400,
                   http("POST", f"{url}/v1/models/shift/infer", '{"inputs": [[1, 1]]}', JSON_TYPE))
        self.check(kind, "POST", infer, "text/plain", 415,
                   http("POST", f"{url}/v1/models/tiny/infer", "1 1", {"Content-Type": "text/plain"}))

        self.wait_for_swarm(url)
        gen = "/v1/models/{name}/generate"
        request = {"prompt": "a", "max_tokens": 3, "temperature": 0}
        whole = self.check(kind, "POST", gen, "whole", 200,
                           http("POST", f"{url}/v1/models/shift/generate", json.dumps(request),
                                JSON_TYPE)).json()
        expect(whole["text"] == "bcd" and whole["finish_reason"] == "length", f"generate: {whole}")
        stream = self.check(kind, "POST", gen, "stream", 200,
                            http("POST", f"{url}/v1/models/shift/generate",
                                 json.dumps({**request, "stream": True}), JSON_TYPE))
        events = [json.loads(e) for e in sse_events(stream)]
        expect("".join(e["text"] for e in events) == "bcd" and
               events[-1]["finish_reason"] == "length", f"generate stream: {events}")
        self.check(kind, "POST", gen, "unknown model", 404,
                   http("POST", f"{url}/v1/models/nosuch/generate", json.dumps(request), JSON_TYPE))
        self.check(kind, "POST", gen, "max_tokens 0", 400,
                   http("POST", f"{url}/v1/models/shift/generate",
                        json.dumps({**request, "max_tokens": 0}), JSON_TYPE))
        self.check(kind, "POST", gen, "text/plain", 415,
                   http("POST", f"{url}/v1/models/shift/generate", json.dumps(request),
                        {"Content-Type": "text/plain"}))
        self.check(kind, "POST", gen, "declared 70000 bytes", 413,
                   declared_too_large(url, "POST", "/v1/models/shift/generate", "application/json",
                                      70000))

        for api, pattern, field in (("completions", "/openai/v1/completions", {"prompt": "a"}),
                                    ("chat", "/openai/v1/chat/completions",
                                     {"messages": [{"role": "user", "content": "a"}]})):
            body = {"model": "shift", "max_tokens": 3, "temperature": 0, **field}
            full = self.check(kind, "POST", pattern, api, 200,
                              http("POST", url + pattern, json.dumps(body), JSON_TYPE)).json()
            text = full["choices"][0]["text" if api == "completions" else "message"]
            expect(len(text if api == "completions" else text["content"]) == 3, f"{api}: {full}")
            s = self.check(kind, "POST", pattern, f"{api} stream", 200,
                           http("POST", url + pattern, json.dumps({**body, "stream": True}),
                                JSON_TYPE))
            expect(sse_events(s)[-1] == "[DONE]", f"{api} stream: {sse_events(s)}")
            missing = self.check(kind, "POST", pattern, "unknown model", 404,
                                 http("POST", url + pattern, json.dumps({**body, "model": "nosuch"}),
                                      JSON_TYPE)).json()
            expect(missing["error"]["code"] == "model_not_found", f"{api}: {missing}")
            self.check(kind, "POST", pattern, "n 2", 400,
                       http("POST", url + pattern, json.dumps({**body, "n": 2}), JSON_TYPE))
            self.check(kind, "POST", pattern, "text/plain", 415,
                       http("POST", url + pattern, json.dumps(body), {"Content-Type": "text/plain"}))
            self.check(kind, "POST", pattern, "declared 70000 bytes", 413,
                       declared_too_large(url, "POST", pattern, "application/json", 70000))

        swarm = self.check(kind, "GET", "/v1/swarm", "swarm", 200, http("GET", f"{url}/v1/swarm"))
        experts = swarm.json()["experts"]
        expect(experts and all("latency" not in e for e in experts),
               f"swarm experts: {experts[:2]}")

        # Generation over the WebSocket.
        ws = websocket.create_connection(url.replace("http", "ws", 1) + "/v1/ws", timeout=TIMEOUT)
        try:
            ws.send_binary(json.dumps({"id": "g1", "model": "shift", **request}).encode())
            answers = []
            while not answers or "finish_reason" not in answers[-1]:
                answers.append(json.loads(ws.recv()))
            expect(all(a["id"] == "g1" for a in answers) and
                   "".join(a["text"] for a in answers) == "bcd", f"WebSocket answers: {answers}")
            self.check(kind, "GET", "/v1/ws", "upgrade and generate", 101,
                       ws_answer(ws))
        finally:
            ws.close()

    def wait_for_swarm(self, url):
        """Polls (each try one generation through the swarm) until the servers' announcements
        reached the router and a token comes back, for at most 60 s."""
        deadline, last = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            a = http("POST", f"{url}/v1/models/shift/generate",
                     json.dumps({"prompt": "a", "max_tokens": 1, "temperature": 0}), JSON_TYPE)
            last = (a.status, a.body[:200])
            if a.status == 200 and a.json().get("text") == "b":
                return
            time.sleep(0.2)
        raise WalkError(f"the swarm never answered a generation; last answer: {last}")

    def run(self):
        """Appends to self.failures what does not hold; a case that fails ends the walk."""
        failures = self.failures
        for process in self.config["processes"]:
            logged = set(process["routes"])
            expect(len(logged) == len(process["routes"]), f"{process['name']}: a route twice")
            documented = documented_routes(self.ops, process["kind"])
            undocumented, missing = logged - documented, documented - logged
            if undocumented or missing:
                failures.append(f"{process['name']}: registered but not documented: "
                                f"{sorted(undocumented)}; documented but not registered: "
                                f"{sorted(missing)}")
            else:
                print(f"ok {process['name']}: its {len(logged)} routes are the document's",
                      flush=True)
        for process in self.config["processes"]:
            if process["kind"] == "expert":
                self.expert(process["url"], keyed=process["keyed"])
            else:
                self.router(process["url"])
        for key, op in self.ops.items():
            for kind in op["x-dmoe-servers"]:
                got = self.covered.get((key, kind), set())
                if got != {SUCCESS, ERROR}:
                    failures.append(f"{key[0]} {key[1]} [{kind}]: no walked "
                                    f"{' and no '.join(sorted({SUCCESS, ERROR} - got))} answer")


def main():
    config_path = os.environ.get("DMOE_OPENAPI_WALK")
    if not config_path:
        sys.exit("openapi_walk: DMOE_OPENAPI_WALK is not set: run this through ctest "
                 "(openapi_walk_main.cc starts the programs and sets it)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    walk = Walk(load_document(), config)
    try:
        walk.run()
    except (WalkError, requests.RequestException, websocket.WebSocketException, OSError,
            ValueError, KeyError) as e:
        walk.failures.append(f"{type(e).__name__}: {e}")
    failures = walk.failures
    for failure in failures:
        print(f"FAIL {failure}", flush=True)
    print(f"openapi_walk: {walk.checked} answers checked, {len(walk.ops)} operations, "
          f"{len(failures)} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
