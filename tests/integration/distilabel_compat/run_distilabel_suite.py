#!/usr/bin/env python3
"""Run distilabel's own unit tests with and without stepfsm, and compare the passing sets.

    python tests/integration/distilabel_compat/run_distilabel_suite.py
    python tests/integration/distilabel_compat/run_distilabel_suite.py --modes plain,warn
    python tests/integration/distilabel_compat/run_distilabel_suite.py --json out.json -v

1. Fetches distilabel's source distribution (the version installed in this
   interpreter by default) with ``pip download --no-deps --no-binary :all:``
   into ``.cache/distilabel-compat/`` and unpacks it; both are reused later.
2. Runs the chosen test paths of the sdist (default: ``tests/unit``, minus the
   tests that download models from the network) once per mode, one after
   another (``--jobs 3``: at once), each from its own copy of the sdist
   directory (the tests write into their tree: sharing one made parallel runs
   disagree with sequential ones), with distilabel's own pytest configuration
   (``-c pytest-distilabel.ini``), never stepfsm's, and a junit XML report each:

   - ``plain``: distilabel alone (stepfsm is not even imported);
   - ``warn``: ``stepfsm.integrations.distilabel.install(on_unloaded_use="warn")``,
     the migration mode, installed by the ``stepfsm_distilabel_shim`` plugin
     before any conftest or test module is imported;
   - ``raise``: ``install()`` with the default policies.

   Everything runs offline (``HF_HUB_OFFLINE=1``) with ``HOME`` and distilabel's
   caches in a temporary folder.
3. Diffs the passing sets by test id against ``plain`` and prints the counts.

Tests that fail in the ``plain`` run (a package or the network they need is
missing here) are outside the comparison by construction; the counts show them.

Exit status: 0 when the ``warn`` passing set equals the ``plain`` one and every
test that ``raise`` makes fail fails with a stepfsm error (a use before load, a
repeated load, a wrapped load error); 1 otherwise; 2 when the sdist cannot be had.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
INI = HERE / "pytest-distilabel.ini"
SHIM = "stepfsm_distilabel_shim"
DEFAULT_CACHE = ROOT / ".cache" / "distilabel-compat"
DEFAULT_TESTS = ("tests/unit",)
#: Test files left out: their fixtures download a model from the network at setup.
DEFAULT_IGNORE = (
    "tests/unit/models/embeddings/test_llamacpp.py",
    "tests/unit/models/llms/test_llamacpp.py",
    # each test starts a 4-node Ray cluster (79 s per run, ~4 min for the three runs);
    # stepfsm's own tests/integration/test_ray.py runs RayPipeline under install()
    "tests/unit/pipeline/test_ray.py",
)
#: Tests left out (node id prefixes): they load a model or tokenizer from the Hugging Face
#: hub by name, which is offline here. Where transformers is installed they would import
#: torch just to fail (7 s for the first one).
DEFAULT_DESELECT = (
    "tests/unit/models/embeddings/test_sentence_transformers.py::"
    "TestSentenceTransformersEmbeddings::test_encode",
    "tests/unit/models/llms/huggingface/test_transformers.py",
    "tests/unit/steps/embeddings/test_embedding_generation.py::TestEmbeddingGeneration::test_process",
    "tests/unit/steps/tasks/structured_outputs/test_outlines.py",
    "tests/unit/steps/tasks/test_generate_embeddings.py::TestGenerateEmbeddings::test_process",
    "tests/unit/steps/test_reward_model.py::TestRewardModelScore::test_process",
    "tests/unit/steps/test_truncate.py::test_truncate_row[4-",
)
MODES = ("plain", "warn", "raise")
#: A failure under "raise" is expected when stepfsm raised it: junit messages start like this.
STEPFSM_ERROR = "stepfsm.errors."


@dataclass
class Run:
    """One pytest run of distilabel's suite."""

    mode: str
    returncode: int
    seconds: float
    summary: str
    #: test id -> (outcome, message); outcome is passed/failed/error/skipped
    outcomes: dict[str, tuple[str, str]]
    report: dict[str, Any] = field(default_factory=dict)

    def ids(self, outcome: str = "passed") -> set[str]:
        return {k for k, (o, _) in self.outcomes.items() if o == outcome}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
        for outcome, _ in self.outcomes.values():
            counts[outcome] += 1
        counts["total"] = len(self.outcomes)
        return counts


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder (two test sessions may fetch at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_sdist(version: str, cache: Path) -> Path:
    """Download (once) and unpack (once) distilabel's sdist; return the unpacked folder."""
    folder = cache / f"distilabel-{version}"
    with _locked(cache):
        if (folder / "tests" / "unit").is_dir():
            return folder
        archive = cache / f"distilabel-{version}.tar.gz"
        if not archive.exists():
            print(f"downloading distilabel=={version} (sdist) into {cache} ...", flush=True)
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"distilabel=={version}",
                    "--dest",
                    str(cache),
                ],
                check=True,
            )
            print(f"downloaded in {time.perf_counter() - started:.0f} s", flush=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python < 3.10.12
                tar.extractall(tmp)  # a PyPI sdist we just downloaded
            Path(tmp, folder.name).rename(folder)
    return folder


def _node_id(case: ET.Element) -> str:
    """A pytest-style id (``path::Class::test[param]``) from a junit (xunit1) testcase."""
    classname, name, file = case.get("classname", ""), case.get("name", ""), case.get("file")
    if not file:  # collection errors: classname "", name is the module's dotted path
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".")
    rest = classname[len(module) + 1 :] if classname.startswith(module) else ""
    return "::".join([file, *(rest.split(".") if rest else ()), name])


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, first line of the failure/error/skip message)."""
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                lines = (child.get("message") or "").strip().splitlines()
                message = lines[0] if lines else ""
                break
        outcomes[_node_id(case)] = (outcome, message)
    return outcomes


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STEPFSM_DISTILABEL_", "PYTEST_", "COV_CORE_"))
        and k not in ("PYTHONWARNINGS", "DISTILABEL_LOG_LEVEL")
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HOME=str(home / "hf"),
        HF_DATASETS_CACHE=str(home / "hf" / "datasets"),
        DISTILABEL_CACHE_DIR=str(home / "distilabel"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p),
    )
    return env


def run_suite(
    mode: str,
    sdist: Path,
    tests: list[str],
    ignore: list[str],
    deselect: list[str],
    work: Path,
    timeout: float,
) -> Run:
    """Run distilabel's tests once in ``mode`` (plain / warn / raise)."""
    home = work / f"home-{mode}"
    home.mkdir(parents=True, exist_ok=True)
    tree = work / f"sdist-{mode}"  # its own copy: distilabel's tests write into their tree
    if not tree.exists():
        shutil.copytree(sdist, tree)
    sdist = tree
    xml, report = work / f"{mode}.xml", work / f"{mode}.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(INI),
        "--rootdir",
        str(sdist),
        "--confcutdir",
        str(sdist),
        "-p",
        "no:cacheprovider",
        "-p",
        SHIM,
        "--stepfsm-install",
        "off" if mode == "plain" else mode,
        "--stepfsm-report",
        str(report),
        "--continue-on-collection-errors",
        "-q",
        "-o",
        "junit_family=xunit1",
        "--junitxml",
        str(xml),
        *(f"--ignore={path}" for path in ignore),
        *(f"--deselect={node}" for node in deselect),
        *tests,
    ]
    started = time.perf_counter()
    log = work / f"{mode}.log"
    with log.open("w") as out:
        proc = subprocess.run(
            cmd, cwd=sdist, env=_env(home), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    seconds = time.perf_counter() - started
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    if not xml.exists():
        raise RuntimeError(f"{mode}: pytest wrote no junit report (exit {proc.returncode}); {log}")
    run = Run(mode, proc.returncode, seconds, summary, parse_junit(xml))
    if report.exists():
        run.report = json.loads(report.read_text())
    return run


def compare(base: Run, other: Run) -> dict[str, list[dict[str, str]]]:
    """The tests that pass in ``base`` but not in ``other`` (lost), and the reverse (gained)."""
    lost = sorted(base.ids() - other.ids())
    gained = sorted(other.ids() - base.ids())
    missing = ("missing", "not run")

    def entry(test: str, run: Run) -> dict[str, str]:
        outcome, message = run.outcomes.get(test, missing)
        return {"id": test, "outcome": outcome, "message": message}

    return {
        "lost": [entry(t, other) for t in lost],
        "gained": [entry(t, base) for t in gained],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, from plain/warn/raise"
    )
    parser.add_argument(
        "--version", default=None, help="distilabel version (default: the installed one)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="sdist cache folder")
    parser.add_argument(
        "--tests", nargs="+", default=list(DEFAULT_TESTS), help="paths in the sdist"
    )
    parser.add_argument(
        "--ignore", nargs="*", default=list(DEFAULT_IGNORE), help="files to leave out"
    )
    parser.add_argument(
        "--deselect",
        nargs="*",
        default=list(DEFAULT_DESELECT),
        help="test id prefixes to leave out",
    )
    parser.add_argument("--jobs", type=int, default=1, help="modes run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--min-passed", type=int, default=1, help="fail if plain passes fewer")
    parser.add_argument("--json", type=Path, default=None, help="write the whole result here")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep logs/XML here (default: temp)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every differing test")
    args = parser.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "plain" not in modes:
        modes.insert(0, "plain")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    version = args.version or metadata.version("distilabel")
    installed = metadata.version("distilabel")
    if version != installed:
        print(f"note: testing the {version} sdist against the installed distilabel {installed}")
    try:
        sdist = fetch_sdist(version, args.cache)
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as error:
        print(f"cannot get the distilabel {version} sdist: {error}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="distilabel-compat-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {
                m: pool.submit(
                    run_suite, m, sdist, args.tests, args.ignore, args.deselect, work, args.timeout
                )
                for m in modes
            }
            runs = {m: f.result() for m, f in futures.items()}
        wall = time.perf_counter() - started
    return report(runs, version, args, wall)


def report(runs: dict[str, Run], version: str, args: argparse.Namespace, wall: float) -> int:
    """Print the counts and differences; write the JSON; return the exit status."""
    plain = runs["plain"]
    problems: list[str] = []
    print(
        f"\ndistilabel {version}: {' '.join(args.tests)} (left out: {len(args.ignore)} files, "
        f"{len(args.deselect)} test id prefixes that need the network)"
    )
    print(f"{'mode':<7}{'passed':>8}{'failed':>8}{'error':>7}{'skipped':>9}{'total':>7}{'time':>8}")
    for mode, run in runs.items():
        c = run.counts()
        print(
            f"{mode:<7}{c['passed']:>8}{c['failed']:>8}{c['error']:>7}{c['skipped']:>9}"
            f"{c['total']:>7}{run.seconds:>7.1f}s"
        )
        expected_installed = mode != "plain"
        if run.report.get("installed") is not expected_installed:
            problems.append(f"{mode}: the shim reports installed={run.report.get('installed')}")
    print(f"wall time {wall:.1f} s")
    if len(plain.ids()) < args.min_passed:
        problems.append(f"plain: only {len(plain.ids())} passed (< --min-passed {args.min_passed})")
    comparisons = {mode: compare(plain, run) for mode, run in runs.items() if mode != "plain"}
    for mode, diff in comparisons.items():
        lost, gained = diff["lost"], diff["gained"]
        print(f"\n{mode} vs plain: {len(lost)} passing tests lost, {len(gained)} gained")
        warned: dict[str, int] = {}
        for counts in runs[mode].report.get("warnings", {}).values():
            for name, n in counts.items():
                warned[name] = warned.get(name, 0) + n
        if warned:
            print(
                "  stepfsm warnings: " + ", ".join(f"{k} x{v}" for k, v in sorted(warned.items()))
            )
        if mode == "warn" and (lost or gained):
            problems.append(
                f"warn: the passing set changed ({len(lost)} lost, {len(gained)} gained)"
            )
        unexpected = [t for t in lost if not t["message"].startswith(STEPFSM_ERROR)]
        if mode == "raise" and unexpected:
            problems.append(f"raise: {len(unexpected)} lost tests fail with a non-stepfsm error")
        if mode == "raise" and gained:
            problems.append(f"raise: {len(gained)} tests pass only with stepfsm")
        kinds: dict[str, int] = {}
        for test in lost:
            kind = test["message"].split(":")[0].removeprefix(STEPFSM_ERROR)
            kinds[kind] = kinds.get(kind, 0) + 1
        if kinds:
            print("  lost by error: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
        if args.verbose or mode == "warn":
            for test in lost:
                print(f"  - {test['id']}\n      {test['outcome']}: {test['message'][:160]}")
            for test in gained:
                print(f"  + {test['id']}\n      was {test['outcome']}: {test['message'][:160]}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "version": version,
                    "tests": args.tests,
                    "ignored": args.ignore,
                    "deselected": args.deselect,
                    "wall_seconds": wall,
                    "runs": {
                        m: {
                            "counts": r.counts(),
                            "seconds": r.seconds,
                            "returncode": r.returncode,
                            "summary": r.summary,
                            "report": r.report,
                        }
                        for m, r in runs.items()
                    },
                    "compare": comparisons,
                    "problems": problems,
                },
                indent=1,
            )
            + "\n"
        )
    print()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
