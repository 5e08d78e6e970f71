"""RemoteExpert against real dmoe-server processes: forward equals numpy over the weights `dmoe export`
writes, backward trains, signing (dmoe-req-v2) and replay refusal, proofs, errors, the WebSocket."""

import http.server
import json
import math
import os
import signal
import threading

import numpy as np
import pytest
import requests

from conftest import HIDDEN, cli, endpoint_of, server_flags
from dmoe_client import DmoeError, Identity, ProofError, ProtocolError, RemoteExpert, ServerError
from dmoe_client import safetensors as st

_erf = np.vectorize(math.erf)


def ffn_numpy(w, x):
    """What an ffn expert computes (expert_server/expert.cc): layer_norm(x + W2 gelu(W1 x + b1) + b2),
    exact (erf) GELU, LayerNorm eps 1e-5; float64 here."""
    x = x.astype(np.float64)
    h = x @ w["linear1.weight"].T.astype(np.float64) + w["linear1.bias"]
    h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
    z = x + h @ w["linear2.weight"].T.astype(np.float64) + w["linear2.bias"]
    mean = z.mean(axis=-1, keepdims=True)
    var = z.var(axis=-1, keepdims=True)
    return (z - mean) / np.sqrt(var + 1e-5) * w["norm.weight"] + w["norm.bias"]


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_forward_equals_numpy_of_exported_weights_and_backward_trains(build_dir, procs, tmp_path):
    db = str(tmp_path / "db")
    server = procs("export", "server", server_flags("ffn.0.0", HIDDEN, 11, "--db", db))
    expert = RemoteExpert(endpoint_of(server), "ffn.0.0")
    x = rand(1, 4, HIDDEN)
    y0 = expert.forward(x)
    assert y0.shape == (4, HIDDEN) and y0.dtype == np.float32 and expert.last_step == 0
    grad_x = expert.backward(x, rand(2, 4, HIDDEN))
    assert grad_x.shape == (4, HIDDEN) and np.all(np.isfinite(grad_x))
    y1 = expert.forward(x)
    assert expert.last_step == 1
    assert np.abs(y1 - y0).max() > 1e-4, "backward did not change the expert's weights"

    assert server.stop(signal.SIGTERM) == 0  # a clean stop checkpoints the newest weights
    out = tmp_path / "ffn.0.0.safetensors"
    cli(build_dir, "export", "--db", db, "--uid", "ffn.0.0", "--out", str(out))
    weights, metadata = st.decode(out.read_bytes())
    assert metadata["step"] == "1" and metadata["uid"] == "ffn.0.0"
    assert sorted(weights) == ["linear1.bias", "linear1.weight", "linear2.bias", "linear2.weight",
                               "norm.bias", "norm.weight"]
    assert weights["linear1.weight"].shape == (4 * HIDDEN, HIDDEN)
    expected = ffn_numpy(weights, x)
    np.testing.assert_allclose(y1, expected, rtol=0, atol=2e-5)
    assert np.abs(y0 - expected).max() > 1e-4  # the export holds the trained weights, not the first


def _post_raw(endpoint, path, body, headers):
    return requests.post(endpoint + path, data=body, timeout=30,
                         headers={"Content-Type": "application/x-safetensors", **headers})


def test_signed_backward_is_accepted_and_bad_or_replayed_signatures_are_refused(swarm):
    trainer = Identity.load(swarm["trainer_key_file"])
    expert = RemoteExpert(swarm["train"], "ffn.0.0", identity=trainer)
    x, g = rand(3, 2, HIDDEN), rand(4, 2, HIDDEN)
    expert.backward(x, g)
    assert expert.last_step == 1
    y_trained = expert.forward(x)

    path = "/v1/experts/ffn.0.0/backward"
    body = st.encode({"x": x, "grad_y": g})
    signed = trainer.sign_request(expert.peer_id, "POST", path, body)
    first = _post_raw(swarm["train"], path, body, signed)
    assert first.status_code == 200, first.text
    replay = _post_raw(swarm["train"], path, body, signed)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "unauthenticated"
    assert "replayed" in replay.json()["error"]["message"]

    bad = dict(trainer.sign_request(expert.peer_id, "POST", path, body))
    bad["X-DMoE-Signature"] = ("0" if bad["X-DMoE-Signature"][0] != "0" else "1") + bad["X-DMoE-Signature"][1:]
    refused = _post_raw(swarm["train"], path, body, bad)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    assert "signature does not match" in refused.json()["error"]["message"]

    # Signed for another server (the twin's peer id): refused here.
    twin_peer = RemoteExpert(swarm["twin"], "ffn.0.0").peer_id
    elsewhere = _post_raw(swarm["train"], path, body, trainer.sign_request(twin_peer, "POST", path, body))
    assert elsewhere.status_code == 401

    with pytest.raises(ServerError) as unsigned:
        RemoteExpert(swarm["train"], "ffn.0.0").backward(x, g)
    assert (unsigned.value.code, unsigned.value.http_status) == ("unauthenticated", 401)
    with pytest.raises(ServerError) as outsider:
        RemoteExpert(swarm["train"], "ffn.0.0", identity=Identity.load(swarm["outsider_key_file"])).backward(x, g)
    assert (outsider.value.code, outsider.value.http_status) == ("permission_denied", 403)
    assert "not a listed trainer key" in outsider.value.message

    # Exactly the two accepted backwards stepped the expert.
    y_now = expert.forward(x)
    assert expert.last_step == 2
    assert np.abs(y_now - y_trained).max() > 1e-5


@pytest.mark.parametrize("uid, x, code, status", [
    ("ffn.1.7", rand(5, 2, HIDDEN), "not_found", 404),
    ("ffn.01", rand(5, 2, HIDDEN), "invalid_argument", 400),
    ("ffn.0.1", rand(5, 2, HIDDEN + 1), "invalid_argument", 400),
    ("ffn.0.1", np.zeros((2, HIDDEN), np.int32), "invalid_argument", 400),
])
def test_errors_raise_with_the_servers_code_and_message(swarm, uid, x, code, status):
    with pytest.raises(ServerError) as raised:
        RemoteExpert(swarm["twin"], uid).forward(x)
    raw = _post_raw(swarm["twin"], f"/v1/experts/{uid}/forward", st.encode({"x": x}), {})
    assert raw.status_code == status
    assert raised.value.code == code and raised.value.http_status == status
    assert raised.value.message == raw.json()["error"]["message"] and raised.value.message


def test_websocket_carries_many_requests_in_flight(swarm):
    expert = RemoteExpert(swarm["twin"], "ffn.0.1", max_in_flight=16)
    xs = [rand(100 + i, 1 + i % 3, HIDDEN) for i in range(40)]
    ys = expert.forward_many(xs)
    assert len(ys) == 40
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(y, expert.forward(x))
    # float64 is sent as float32; half-precision traffic: the answer comes in the request's dtype.
    np.testing.assert_array_equal(expert.forward(xs[0].astype(np.float64)), ys[0])
    y16 = expert.forward_many([xs[0].astype(np.float16)])[0]
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, ys[0], atol=2e-2)
    ybf = expert.forward_many([xs[0]], dtype="BF16")[0]
    assert ybf.dtype == np.float32
    np.testing.assert_allclose(ybf, ys[0], atol=6e-2)
    with pytest.raises(ServerError) as missing:
        RemoteExpert(swarm["twin"], "ffn.1.9").forward_many([xs[0]])
    assert missing.value.code == "not_found" and "ffn.1.9" in missing.value.message
    expert.close()


def test_answers_past_the_limit_are_refused(swarm):
    x = rand(9, 4, HIDDEN)  # y is 4 * 16 * 4 = 256 bytes of data plus its header
    small = RemoteExpert(swarm["twin"], "ffn.0.1", max_answer_bytes=200)
    with pytest.raises(ProtocolError, match="exceeds the limit of 200"):
        small.forward(x)
    with pytest.raises(ProtocolError, match="exceeds the limit of 200"):
        small.forward_many([x])
    roomy = RemoteExpert(swarm["twin"], "ffn.0.1", max_answer_bytes=400)
    np.testing.assert_array_equal(roomy.forward_many([x])[0], roomy.forward(x))


def test_signed_websocket_backward_steps_and_an_unsigned_one_is_refused(swarm):
    trainer = Identity.load(swarm["trainer_key_file"])
    with RemoteExpert(swarm["train"], "ffn.1.0", identity=trainer) as expert:
        pairs = [(rand(200 + i, 2, HIDDEN), rand(300 + i, 2, HIDDEN)) for i in range(3)]
        y_before = expert.forward(pairs[0][0])
        grads = expert.backward_many(pairs)
        assert [g.shape for g in grads] == [(2, HIDDEN)] * 3
        # The server merges backwards that arrive together into one batch: one to three steps.
        assert 1 <= expert.last_step <= 3
        assert np.abs(expert.forward(pairs[0][0]) - y_before).max() > 1e-5
    with pytest.raises(ServerError) as unsigned:
        RemoteExpert(swarm["train"], "ffn.1.0").backward_many(pairs[:1])
    assert unsigned.value.code == "unauthenticated"


def test_step_seen_lets_the_server_refuse_stale_gradients(swarm):
    expert = RemoteExpert(swarm["twin"], "ffn.0.0")  # the twin runs with --max-staleness 1
    x, g = rand(400, 2, HIDDEN), rand(401, 2, HIDDEN)
    expert.forward(x)
    seen = expert.last_step
    expert.backward(x, g, step_seen=seen)
    expert.backward(x, g, step_seen=seen + 1)
    assert expert.last_step == seen + 2
    with pytest.raises(ServerError) as stale:
        expert.backward(x, g, step_seen=seen)
    assert stale.value.code == "invalid_argument" and "stale" in stale.value.message


class _LyingHealth(http.server.BaseHTTPRequestHandler):
    """Answers /v1/health?challenge= with a well-formed proof by a key it did not sign with."""

    def do_GET(self):  # noqa: N802 - http.server's name
        key = Identity.generate()
        other = Identity.generate()
        challenge = self.path.split("challenge=")[1]
        proof = other.sign(f"dmoe-proof-v1\n{other.peer_id}\n{challenge}").hex()
        body = json.dumps({"status": "ok", "peer_id": key.peer_id, "public_key": key.public_key_hex,
                           "proof": proof}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_endpoint_must_prove_its_key(swarm):
    with pytest.raises(ProofError, match="proved peer id"):
        RemoteExpert(swarm["twin"], "ffn.0.0", peer_id="00" * 32).forward(rand(1, 1, HIDDEN))
    real = RemoteExpert(swarm["twin"], "ffn.0.0").peer_id
    assert RemoteExpert(swarm["twin"], "ffn.0.0", peer_id=real).forward(rand(1, 1, HIDDEN)).shape == (1, HIDDEN)

    liar = http.server.HTTPServer(("127.0.0.1", 0), _LyingHealth)
    thread = threading.Thread(target=liar.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ProofError, match="without a valid proof"):
            RemoteExpert(f"127.0.0.1:{liar.server_port}", "ffn.0.0").forward(rand(1, 1, HIDDEN))
    finally:
        liar.shutdown()


def test_identity_load_reads_dmoe_keygen_files(build_dir, tmp_path):
    path = tmp_path / "id.key"
    out = cli(build_dir, "keygen", "--out", str(path))
    fields = dict(line.split("=", 1) for line in out.split())
    identity = Identity.load(str(path))
    assert identity.public_key_hex == fields["public_key"] and identity.peer_id == fields["peer_id"]
    assert cli(build_dir, "pubkey", "--identity", str(path)).strip() == identity.public_key_hex
    os.chmod(path, 0o644)
    with pytest.raises(DmoeError, match="chmod 600"):
        Identity.load(str(path))
    mine = Identity.generate()
    mine.save(str(tmp_path / "mine.key"))
    assert os.stat(tmp_path / "mine.key").st_mode & 0o777 == 0o600
    assert cli(build_dir, "pubkey", "--identity", str(tmp_path / "mine.key")).strip() == mine.public_key_hex
    assert Identity.load(str(tmp_path / "mine.key")).peer_id == mine.peer_id
    bad = tmp_path / "bad.key"
    bad.write_text("XYZ\n")
    os.chmod(bad, 0o600)
    with pytest.raises(DmoeError, match="64 lowercase hex"):
        Identity.load(str(bad))
