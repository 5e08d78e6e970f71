"""Fixtures that start REAL dmoe processes from the build directory (env DMOE_BUILD_DIR, absolute).

Every process listens on 127.0.0.1 with port 0 and prints where it listens; a fixture waits for that
line with a deadline (never a sleep), kills its processes on teardown, and a failed test shows the
stderr of every process started so far. A missing or wrong DMOE_BUILD_DIR fails, naming the fix.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmoe_client import Router  # noqa: E402
from dmoe_client.errors import ServerError  # noqa: E402

HIDDEN = 16  # width of the ffn experts of the "train" and "twin" servers
LM_HIDDEN = 32  # width of the text model and its lm.* experts
SEED = 7  # --seed of "train" and "twin": the same uid starts with the same weights on both
TRAIN_GRID = "ffn.[0:2].[0:2]"
_STARTED = []  # every DmoeProcess of this session, for failure reports


def poll(predicate, timeout, what):
    """Calls predicate() until it returns a true value; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below when the deadline passes
            last = e
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout} s (last error: {last!r})")


class DmoeProcess:
    """A child process whose stdout lines are collected by a thread; stderr goes to a file."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.argv = argv
        self.stderr_path = os.path.join(log_dir, f"{name}.stderr")
        self._lines = []
        self._cond = threading.Condition()
        with open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        _STARTED.append(self)

    def _read(self):
        for raw in self.popen.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append(None)  # end of output
            self._cond.notify_all()

    def wait_for_line(self, prefix, timeout=30.0):
        """The rest of the first stdout line starting with `prefix`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if line is None:
                        pytest.fail(f"{self.name} exited (status {self.popen.wait()}) before printing "
                                    f"{prefix!r}; stderr:\n{self.stderr()}")
                    if line.startswith(prefix):
                        return line[len(prefix):]
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{self.name} printed no {prefix!r} line within {timeout} s; "
                                f"stderr:\n{self.stderr()}")
                self._cond.wait(left)

    def lines(self):
        with self._cond:
            return [line for line in self._lines if line is not None]

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read()[-8000:].decode("utf-8", errors="replace")

    def stop(self, sig=signal.SIGKILL, timeout=30.0):
        """Sends `sig` and waits for the exit; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for p in _STARTED:
            report.sections.append((f"stderr of {p.name} ({' '.join(p.argv)})", p.stderr()))


@pytest.fixture(scope="session")
def build_dir():
    path = os.environ.get("DMOE_BUILD_DIR", "")
    if not path or not os.path.isabs(path):
        pytest.fail(f"DMOE_BUILD_DIR must be the absolute path of the build directory (got {path!r}); "
                    "run the tests through ctest (`ctest -R python_client` in build/) or set it")
    for binary in ("dht/dmoe-dht", "expert_server/dmoe-server", "router/dmoe-router", "cli/dmoe"):
        if not os.access(os.path.join(path, binary), os.X_OK):
            pytest.fail(f"{path}/{binary} is missing: build first (DMOE_JOBS=1 scripts/build)")
    return path


@pytest.fixture(scope="session")
def procs(build_dir, tmp_path_factory):
    """Starts processes: start(name, kind, flags) -> DmoeProcess; kills them all at the end."""
    log_dir = str(tmp_path_factory.mktemp("logs"))
    binaries = {"dht": "dht/dmoe-dht", "server": "expert_server/dmoe-server",
                "router": "router/dmoe-router"}
    mine = []

    def start(name, kind, flags):
        argv = [os.path.join(build_dir, binaries[kind]), "--listen", "127.0.0.1:0", "--log-level", "warn"]
        p = DmoeProcess(name, argv + flags, log_dir)
        mine.append(p)
        return p

    yield start
    for p in mine:
        p.stop()


def cli(build_dir, *args):
    """Runs the `dmoe` CLI; returns its stdout, failing the test with its stderr on error."""
    result = subprocess.run([os.path.join(build_dir, "cli/dmoe"), *args], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"dmoe {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def keygen(build_dir, path):
    """A new identity file written by `dmoe keygen`; returns its public key hex."""
    out = cli(build_dir, "keygen", "--out", str(path))
    return dict(line.split("=", 1) for line in out.split())["public_key"]


def server_flags(experts, hidden, seed, *extra):
    return ["--experts", experts, "--hidden-dim", str(hidden), "--seed", str(seed), "--threads", "1",
            "--net-threads", "1", *extra]


def endpoint_of(process):
    return process.wait_for_line("listening on ").split()[0]


def text_model_spec(name, prefix="lm"):
    """A byte-level token model: embedding, a residual_moe over PREFIX.0 and PREFIX.1 (both always
    asked, k_min 2, so every token sees the same experts), an untied lm_head."""
    return {"name": name, "input": "tokens", "vocab": 256, "max_len": 64, "layers": [
        {"type": "embedding", "dim": LM_HIDDEN},
        {"type": "residual_moe", "pre_norm": True, "uid_prefix": prefix, "grid": [2], "k_best": 2,
         "k_min": 2, "forward_timeout_ms": 5000, "timeout_after_k_min_ms": 2000},
        {"type": "lm_head"}]}


def text_model_state():
    rng = np.random.default_rng(5)
    f32 = np.float32
    return {
        "layer0.weight": rng.normal(size=(256, LM_HIDDEN)).astype(f32),
        "layer1.gate0.weight": (0.1 * rng.normal(size=(2, LM_HIDDEN))).astype(f32),
        "layer1.gate0.bias": np.zeros(2, f32),
        "layer1.norm.weight": np.ones(LM_HIDDEN, f32),
        "layer1.norm.bias": np.zeros(LM_HIDDEN, f32),
        "layer2.weight": (0.5 * rng.normal(size=(256, LM_HIDDEN))).astype(f32),
    }


@pytest.fixture(scope="session")
def swarm(build_dir, procs, tmp_path_factory):
    """A dht; "train" (ffn grid, --trainer-keys, announced), "twin" (the same grid and seed, open,
    --max-staleness 1),
    "lm" (the experts of the text model) and a router with the text model "tiny" published.

    Tests that train use distinct uids, so none depends on another's updates.
    """
    tmp = tmp_path_factory.mktemp("swarm")
    trainer_key = keygen(build_dir, tmp / "trainer.key")
    keygen(build_dir, tmp / "outsider.key")
    (tmp / "trainer_keys.txt").write_text(trainer_key + "\n")

    dht = procs("dht", "dht", [])
    dht_addr = dht.wait_for_line("listening on udp://").split()[0]
    announce = ["--dht", dht_addr, "--announce-every", "1", "--announce-ttl", "3"]
    train = procs("train", "server", server_flags(TRAIN_GRID, HIDDEN, SEED, "--trainer-keys",
                                                 str(tmp / "trainer_keys.txt"), *announce))
    twin = procs("twin", "server", server_flags(TRAIN_GRID, HIDDEN, SEED, "--max-staleness", "1"))
    lm = procs("lm", "server", server_flags("lm.[0:2]", LM_HIDDEN, 3, *announce))
    router = procs("router", "router", ["--dht", dht_addr, "--db", str(tmp / "router-db"),
                                        "--refresh-ms", "300", "--threads", "1",
                                        "--inference-threads", "1", "--watch", "lm."])
    info = {"dir": tmp, "dht": dht_addr, "train": endpoint_of(train), "twin": endpoint_of(twin),
            "lm": endpoint_of(lm), "router": endpoint_of(router),
            "trainer_key_file": str(tmp / "trainer.key"), "outsider_key_file": str(tmp / "outsider.key")}

    publish_text_model(info["router"], "tiny", "lm")
    return info


def publish_text_model(router_url, name, prefix):
    """Publishes text_model_spec(name, prefix) and waits until a token comes through the swarm."""
    with Router(router_url) as r:
        r.publish(text_model_spec(name, prefix), text_model_state())

        def one_token():
            try:
                return r.generate(name, "a", max_tokens=1, seed=1)["finish_reason"] == "length"
            except ServerError as e:
                if e.code == "unavailable":  # the router has not seen the experts yet
                    return False
                raise

        poll(one_token, 30, f"a generation of {name} through the swarm")


@pytest.fixture
def example_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "readme_example.py")


