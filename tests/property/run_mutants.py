#!/usr/bin/env python3
"""Mutation check: every hand-made mutant of the stepfsm engine must be caught by the tests.

    .venv/bin/python tests/property/run_mutants.py            # all mutants, 2 at a time
    .venv/bin/python tests/property/run_mutants.py 05 18      # only mutants named like these
    .venv/bin/python tests/property/run_mutants.py --jobs 1 --profile ci
    .venv/bin/python tests/property/run_mutants.py --tests tests/property 22   # other test paths

Each mutant is a unified diff of files under ``stepfsm/`` in
``tests/property/mutants/``. The repository is copied to a temporary
directory (stepfsm/, tests/, docs/, pyproject.toml; never the working tree itself),
the patch is applied to the copy with ``patch -p1``, and pytest runs the
test paths in :data:`TESTS` there (the property tests, the interrupt sweep
and the hardening regressions) with a fixed hypothesis seed. The unmutated
copy runs first: a mutant is *caught* by the tests that pass on the unmutated
copy and fail on the mutant (so a known library bug that already fails a test
cannot count as catching anything). Prints a table and exits 1 if a mutant
survives or a patch no longer applies.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MUTANTS = HERE / "mutants"
#: What a copy needs: the tests read docs/ too (test_exhaustive checks the count
#: docs/testing.md quotes).
COPY = ("stepfsm", "tests", "docs", "pyproject.toml")
#: The test paths every run uses (relative to the repository root): the model-based
#: property tests, plus the tests of the interrupt- and fork-safety machinery (mutants 22-26).
TESTS: tuple[str, ...] = (
    "tests/property",
    "tests/unit/test_interrupt_sweep.py",
    "tests/unit/test_hardening.py",
)
IGNORE = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc", ".pytest_cache")


def make_copy(where: Path, source_root: Path = ROOT) -> Path:
    """Copy what the tests need from ``source_root`` into ``where`` and return it."""
    for name in COPY:
        source = source_root / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=IGNORE)
        else:
            shutil.copy2(source, where / name)
    return where


def run_tests(
    copy: Path,
    tests: tuple[str, ...],
    profile: str,
    seed: int,
    timeout: int,
    messages: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run the test paths ``tests`` in ``copy``; return {test id: "passed" | "failed" | "skipped"}.

    A run that produced no report at all (pytest could not even collect) maps
    ``"<run>"`` to the tail of its output. ``messages``, if given, receives the
    first line of each failing test's message.
    """
    report = copy / "report.xml"
    env = {
        **os.environ,
        "HYPOTHESIS_PROFILE": profile,
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={seed}",
        "-o",
        f"timeout={timeout}",
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit1",
    ]
    probe = subprocess.run(
        [sys.executable, "-c", "import stepfsm; print(stepfsm.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(copy)), f"imports {probe.stdout} instead"
    # Output goes to a file, and pytest runs in a session of its own whose leftovers are
    # killed: a mutant can strand a process forked by a test (test_hardening forks inside
    # a load), and such a process must neither keep a pipe open nor outlive the run.
    log = copy / "pytest.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            command, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            run.wait()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)
    outcomes: dict[str, str] = {}
    if not report.exists():
        return {"<run>": log.read_text(errors="replace")[-2000:]}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            outcomes[name] = "failed"
            if messages is not None:
                messages[name] = (failure.get("message") or "").strip().split("\n")[0][:300]
        elif case.find("skipped") is not None:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    return outcomes


def check_mutant(
    patch: Path, args: argparse.Namespace, baseline: dict[str, str], snapshot: Path
) -> dict[str, object]:
    """Apply one patch to a fresh copy of ``snapshot``, run the tests, say which caught it."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"stepfsm-{patch.stem}-") as tmp:
        copy = make_copy(Path(tmp), snapshot)
        applied = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "-i", str(patch)],
            cwd=copy,
            capture_output=True,
            text=True,
            check=False,
        )
        if applied.returncode != 0:
            return {"name": patch.stem, "status": "PATCH FAILED", "caught_by": [], "seconds": 0.0}
        outcomes = run_tests(copy, args.tests, args.profile, args.seed, args.timeout)
    caught = sorted(
        test
        for test, outcome in outcomes.items()
        if outcome == "failed" and baseline.get(test) == "passed"
    )
    missing = sorted(t for t in baseline if t not in outcomes)
    status = "caught" if caught else "SURVIVED"
    if missing:  # tests that did not run at all: say so rather than guess
        status = f"RUN BROKEN ({len(missing)} tests missing)"
        if "<run>" in outcomes:
            print(f"  {patch.stem}: pytest output:\n{outcomes['<run>']}", flush=True)
    return {
        "name": patch.stem,
        "status": status,
        "caught_by": caught,
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--profile", default="dev", help="HYPOTHESIS_PROFILE for the runs")
    parser.add_argument("--seed", type=int, default=0, help="--hypothesis-seed for every run")
    parser.add_argument(
        "--timeout", type=int, default=180, help="per-test timeout (pytest-timeout)"
    )
    parser.add_argument("--details", action="store_true", help="list every catching test")
    parser.add_argument(
        "--tests",
        action="append",
        metavar="PATH",
        help=f"run this test path instead of the defaults (repeatable; default: {' '.join(TESTS)})",
    )
    args = parser.parse_args()
    args.tests = tuple(args.tests or TESTS)
    for path in args.tests:
        if not (ROOT / path.split("::", 1)[0]).exists():
            parser.error(f"no such test path: {path}")
    started = time.perf_counter()
    patches = sorted(MUTANTS.glob("*.patch"))
    if args.only:
        patches = [p for p in patches if any(word in p.stem for word in args.only)]
    print(
        f"baseline: {' '.join(args.tests)} on an unmutated copy (profile {args.profile})",
        flush=True,
    )
    # One snapshot of the working tree, so every run tests the same source even if
    # the tree changes meanwhile; the baseline and each mutant run in a copy of it.
    snapshot_dir = tempfile.TemporaryDirectory(prefix="stepfsm-snapshot-")
    snapshot = make_copy(Path(snapshot_dir.name))
    with tempfile.TemporaryDirectory(prefix="stepfsm-baseline-") as tmp:
        why: dict[str, str] = {}
        baseline = run_tests(
            make_copy(Path(tmp), snapshot), args.tests, args.profile, args.seed, args.timeout, why
        )
    if "<run>" in baseline:
        print(f"the unmutated tests did not run:\n{baseline['<run>']}")
        return 1
    failing = sorted(t for t, outcome in baseline.items() if outcome == "failed")
    print(
        f"  {len(baseline)} tests, {len(failing)} already failing (not counted)"
        f" ({time.perf_counter() - started:.0f} s):",
        flush=True,
    )
    for test in failing:
        print(f"    {test}: {why.get(test, '')}")
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(check_mutant, patch, args, baseline, snapshot) for patch in patches]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            results.append(result)
            print(f"  {result['name']}: {result['status']} ({result['seconds']:.0f} s)", flush=True)
    print("\n| mutant | status | caught by (failing tests per file, x count) |\n|---|---|---|")
    for result in sorted(results, key=lambda r: str(r["name"])):
        tests = result["caught_by"]
        assert isinstance(tests, list)
        files: dict[str, int] = {}
        for test in tests:
            module = test.split("::", 1)[0]
            files[module] = files.get(module, 0) + 1
        shown = ", ".join(f"{module} x{count}" for module, count in files.items())
        print(f"| {result['name']} | {result['status']} | {shown} |")
    if args.details:
        for result in sorted(results, key=lambda r: str(r["name"])):
            print(f"\n{result['name']}:")
            for test in result["caught_by"]:  # type: ignore[attr-defined]
                print(f"  {test}")
    snapshot_dir.cleanup()
    if failing:  # easy to miss at the top: a test failing unmutated can catch nothing
        print(f"\nWARNING: {len(failing)} tests fail unmutated and catch nothing: {failing}")
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"\n{len(results)} mutants, {args.jobs} at a time: {minutes} min {seconds} s in all")
    survivors = [r for r in results if r["status"] != "caught"]
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
