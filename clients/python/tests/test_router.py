"""Router against a real dmoe-router with the text model "tiny" (conftest) and a feature model."""

import numpy as np
import pytest

import signal

from conftest import LM_HIDDEN, endpoint_of, poll, publish_text_model, server_flags
from dmoe_client import Identity, Router, ServerError


def test_streaming_generation_yields_the_text_of_the_plain_call(swarm):
    with Router(swarm["router"]) as router:
        plain = router.generate("tiny", "The swarm", max_tokens=24, temperature=1.0, seed=1234)
        stream = router.generate("tiny", "The swarm", max_tokens=24, temperature=1.0, seed=1234,
                                 stream=True)
        pieces = list(stream)
    assert plain["finish_reason"] == "length" and plain["usage"]["completion_tokens"] == 24
    assert len(pieces) >= 2 and all(pieces)
    assert "".join(pieces) == plain["text"] == stream.text
    assert stream.finish_reason == "length"
    assert stream.usage == plain["usage"] and stream.model_version == plain["model_version"]
    with Router(swarm["router"]) as router:
        other = router.generate("tiny", "The swarm", max_tokens=24, temperature=1.0, seed=99)
        with router.generate("tiny", "The swarm", max_tokens=24, seed=1234, stream=True) as early:
            first = next(early)
    assert other["text"] != plain["text"]  # the seed matters, so the equality above says something
    assert first == pieces[0] and early.finish_reason is None


def test_models_and_swarm(swarm):
    router = Router(swarm["router"])
    models = {m["name"]: m for m in router.models()}
    assert models["tiny"]["spec"]["vocab"] == 256 and models["tiny"]["version"] > 0
    # The swarm view refreshes every --refresh-ms (300 ms) apart from the generations' lookups.
    poll(lambda: {"lm.0", "lm.1"} <= {e["uid"] for e in router.swarm()["experts"]}, 20,
         "the router's swarm view listing lm.0 and lm.1")
    expert = next(e for e in router.swarm()["experts"] if e["uid"] == "lm.0")
    assert expert["endpoint"] == swarm["lm"]


def test_infer_equals_numpy_of_the_published_layer(swarm):
    rng = np.random.default_rng(8)
    weight = rng.normal(size=(3, 5)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    router = Router(swarm["router"])
    spec = {"name": "affine", "input_dim": 5, "layers": [{"type": "linear", "out": 3}]}
    answer = router.publish(spec, {"layer0.weight": weight, "layer0.bias": bias}, version=1000)
    assert answer == {"name": "affine", "version": 1000}
    x = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(router.infer("affine", x), x @ weight.T + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, code, status, words", [
    (lambda r: r.generate("nosuch", "hi"), "not_found", 404, "nosuch"),
    (lambda r: r.generate("tiny", "hi", temperature=5), "invalid_argument", 400, "temperature"),
    (lambda r: r.generate("tiny", "hi", stream=True, top_k=-1), "invalid_argument", 400, "top_k"),
    (lambda r: r.infer("tiny", np.zeros((1, 4), np.float32)), "invalid_argument", 400, "generate"),
])
def test_router_errors_raise_with_the_routers_code_and_message(swarm, call, code, status, words):
    with pytest.raises(ServerError) as raised:
        call(Router(swarm["router"]))
    assert (raised.value.code, raised.value.http_status) == (code, status)
    assert words in raised.value.message


def test_signed_publication_is_accepted_by_a_router_with_trainer_keys(swarm, procs):
    keys = swarm["dir"] / "publisher_keys.txt"
    trainer = Identity.load(swarm["trainer_key_file"])
    keys.write_text(trainer.public_key_hex + "\n")
    guarded = procs("guarded-router", "router", ["--dht", swarm["dht"], "--db", str(swarm["dir"] / "guarded-db"),
                                                 "--trainer-keys", str(keys), "--threads", "1"])
    url = endpoint_of(guarded)
    spec = {"name": "affine", "input_dim": 2, "layers": [{"type": "linear", "out": 1}]}
    state = {"layer0.weight": np.array([[2.0, -1.0]], np.float32), "layer0.bias": np.array([0.5], np.float32)}
    with pytest.raises(ServerError) as unsigned:
        Router(url).publish(spec, state)
    assert (unsigned.value.code, unsigned.value.http_status) == ("unauthenticated", 401)
    with pytest.raises(ServerError) as outsider:
        Router(url, identity=Identity.load(swarm["outsider_key_file"])).publish(spec, state)
    assert outsider.value.code == "permission_denied"
    router = Router(url, identity=trainer)
    assert router.publish(spec, state, version=7) == {"name": "affine", "version": 7}
    np.testing.assert_allclose(router.infer("affine", np.array([[1.0, 1.0]], np.float32)), [[1.5]])


def test_a_swarm_failure_mid_stream_raises_the_routers_error(swarm, procs):
    # Experts that take 50 ms a token (each batch waits for company), so the stream is still going
    # when they are killed.
    frag = procs("frag", "server", server_flags("frag.[0:2]", LM_HIDDEN, 4, "--batch-timeout-ms", "50",
                                               "--dht", swarm["dht"], "--announce-every", "1",
                                               "--announce-ttl", "3"))
    endpoint_of(frag)
    publish_text_model(swarm["router"], "fragile", "frag")
    stream = Router(swarm["router"]).generate("fragile", "a", max_tokens=60, seed=3, stream=True)
    next(stream)
    frag.stop(signal.SIGKILL)
    with pytest.raises(ServerError) as failed:
        for _ in stream:
            pass
    assert failed.value.code == "unavailable" and failed.value.message
    assert stream.finish_reason == "error" and 1 <= stream.usage["completion_tokens"] < 60
