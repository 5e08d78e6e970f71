"""The README's example, run as written against the real swarm, and the documented install line."""

import os
import shutil
import subprocess
import sys

from dmoe_client import Router

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_readme_example_runs_as_written(swarm):
    example = os.path.join(PACKAGE_DIR, "examples", "readme_example.py")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PACKAGE_DIR))
    result = subprocess.run([sys.executable, example, swarm["router"], swarm["twin"], "tiny", "ffn.0.0"],
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    router = Router(swarm["router"])
    names = [m["name"] for m in router.models()]
    text = router.generate("tiny", "Once upon a time", max_tokens=32, seed=7)["text"]
    assert result.stdout.decode() == f"models: {names}\n{text}\ny = (4, 16)\n"


def test_readme_shows_the_example_verbatim():
    # The README's "Use from Python" block is the file the test above runs, character for character.
    with open(os.path.join(PACKAGE_DIR, "..", "..", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Use from Python", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    with open(os.path.join(PACKAGE_DIR, "examples", "readme_example.py"), encoding="utf-8") as f:
        assert block == f.read()


def test_package_installs_offline_with_debians_pip(tmp_path):
    # The documented line, on a copy (pip builds in the source directory).
    source = tmp_path / "python"
    shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "V"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin/pip"), "install", "--no-build-isolation", "--no-index", str(source)],
                             capture_output=True, text=True, timeout=300)
    hint = ("\nDebian's python3-nacl names `cffi` as a requirement: install python3-cffi "
            "(scripts/setup)" if "cffi" in install.stderr else "")
    assert install.returncode == 0, install.stdout + install.stderr + hint
    probe = subprocess.run([str(venv / "bin/python"), "-c",
                            "import dmoe_client, dmoe_client.torch; print(dmoe_client.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(venv)), probe.stdout
