#!/usr/bin/env python3
"""Mutation check of tests/property: every hand-made mutant of stepfsm/machine.py must be caught.

    .venv/bin/python tests/property/run_mutants.py            # all mutants, 2 at a time
    .venv/bin/python tests/property/run_mutants.py 05 18      # only mutants named like these
    .venv/bin/python tests/property/run_mutants.py --jobs 1 --profile ci

Each mutant is a unified diff in ``tests/property/mutants/``. The repository
is copied to a temporary directory (stepfsm/, tests/, pyproject.toml; never
the working tree itself), the patch is applied to the copy with ``patch -p1``,
and ``pytest tests/property`` runs there with a fixed hypothesis seed. The
unmutated copy runs first: a mutant is *caught* by the tests that pass on the
unmutated copy and fail on the mutant (so a known library bug that already
fails a test cannot count as catching anything). Prints a table and exits 1
if a mutant survives or a patch no longer applies.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MUTANTS = HERE / "mutants"
COPY = ("stepfsm", "tests", "pyproject.toml")
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


def run_tests(copy: Path, profile: str, seed: int, timeout: int) -> dict[str, str]:
    """Run tests/property in ``copy``; return {test id: "passed" | "failed" | "skipped"}.

    A run that produced no report at all (pytest could not even collect) maps
    ``"<run>"`` to the tail of its output.
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
        "tests/property",
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
    run = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, check=False)
    outcomes: dict[str, str] = {}
    if not report.exists():
        return {"<run>": (run.stdout + run.stderr)[-2000:]}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
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
        outcomes = run_tests(copy, args.profile, args.seed, args.timeout)
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
    args = parser.parse_args()
    patches = sorted(MUTANTS.glob("*.patch"))
    if args.only:
        patches = [p for p in patches if any(word in p.stem for word in args.only)]
    print(f"baseline: tests/property on an unmutated copy (profile {args.profile})", flush=True)
    # One snapshot of the working tree, so every run tests the same source even if
    # the tree changes meanwhile; the baseline and each mutant run in a copy of it.
    snapshot_dir = tempfile.TemporaryDirectory(prefix="stepfsm-snapshot-")
    snapshot = make_copy(Path(snapshot_dir.name))
    with tempfile.TemporaryDirectory(prefix="stepfsm-baseline-") as tmp:
        baseline = run_tests(make_copy(Path(tmp), snapshot), args.profile, args.seed, args.timeout)
    if "<run>" in baseline:
        print(f"the unmutated tests did not run:\n{baseline['<run>']}")
        return 1
    failing = sorted(t for t, outcome in baseline.items() if outcome == "failed")
    print(f"  {len(baseline)} tests, {len(failing)} already failing (not counted):", flush=True)
    for test in failing:
        print(f"    {test}")
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
    survivors = [r for r in results if r["status"] != "caught"]
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
