"""``stepfsm demo``: the notebook story, told in a terminal.

Each section prints what a user would type and what stepfsm answers. The
step is a small offline "LLM" whose weights are a real 32 MiB buffer, so
"loaded twice" would be visible memory, not a counter. Every class the demo
shows (in its code lines and in ``stepfsm.status()``) is one a user could
have written: the Ctrl-C of section 5 is a real SIGINT, sent while an
ordinary ``TinyLLM``'s load runs, not a special class that raises.
"""

from __future__ import annotations

import argparse
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import stepfsm

__all__ = ["main"]

WIDTH = 88


class TinyLLM(stepfsm.Stateful, guard=("generate",)):
    """An offline stand-in for an LLM: loading allocates its "weights"."""

    loads = 0  # how many times any TinyLLM's load() ran (class-wide)

    def __init__(self, name: str, load_seconds: float = 0.2, fail_first: int = 0) -> None:
        self.name = name
        self.load_seconds = load_seconds  # how long "moving the weights to the GPU" takes
        self.fail_first = fail_first  # how many loads fail (a pretend out-of-memory)
        self.weights: bytearray | None = None

    def load(self) -> None:
        type(self).loads += 1
        self.weights = bytearray(32 * 1024 * 1024)
        time.sleep(self.load_seconds)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise OSError("CUDA out of memory (pretend)")

    def unload(self) -> None:
        self.weights = None

    def generate(self, prompt: str) -> str:
        assert self.weights is not None
        return f"{prompt!r} -> {len(self.weights) // 2**20} MiB of weights say hello"


#: What the demo shows of :class:`TinyLLM` (its code, without the bookkeeping).
CLASS_SOURCE = """\
class TinyLLM(stepfsm.Stateful, guard=("generate",)):
    def __init__(self, name, load_seconds=0.2, fail_first=0): ...
    def load(self):
        self.weights = bytearray(32 * 1024 * 1024)
        time.sleep(self.load_seconds)        # "moving the weights to the GPU"
        if self.fail_first: ...              # raise OSError("CUDA out of memory")
    def unload(self):
        self.weights = None
    def generate(self, prompt): ...
"""


def _press_ctrl_c(step: TinyLLM, after: float = 0.05) -> threading.Thread:
    """Press Ctrl-C for the user ``after`` seconds into ``step``'s load.

    A thread waits until the load runs, then sends the main thread a real
    SIGINT, as the terminal does on Ctrl-C (where ``signal.pthread_kill``
    does not exist, ``signal.raise_signal``: Windows wakes the main thread's
    sleep then). If the load never starts, nothing is sent.
    """
    main = threading.main_thread().ident

    def press() -> None:
        deadline = time.monotonic() + 10
        while stepfsm.state(step) is not stepfsm.State.LOADING:
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        time.sleep(after)
        if hasattr(signal, "pthread_kill") and main is not None:
            signal.pthread_kill(main, signal.SIGINT)
        else:  # pragma: no cover - Windows
            signal.raise_signal(signal.SIGINT)

    thread = threading.Thread(target=press, name="ctrl-c", daemon=True)
    thread.start()
    return thread


def _two(first: TinyLLM, second: TinyLLM) -> str:
    first.load()
    second.load()
    return first.generate("hi")


def _held_load(first: TinyLLM, second: TinyLLM, step: TinyLLM) -> None:
    with stepfsm.loaded(first), stepfsm.loaded(second):
        step.load()


def _section(title: str) -> None:
    print(f"\n\033[1m{title}\033[0m" if _color else f"\n{title}")
    print("-" * min(WIDTH, len(title)))


def _code(line: str) -> None:
    print(f"  >>> {line}")


def _show(value: object) -> None:
    for line in str(value).splitlines():
        print(f"  {line}")


def _attempt(line: str, action: Callable[[], Any]) -> Any:
    _code(line)
    try:
        result = action()
    except (stepfsm.StepFSMError, KeyboardInterrupt) as error:
        text = f"{type(error).__name__}: {error}"
        wrapped = textwrap.wrap(text, WIDTH - 4, subsequent_indent="    ")
        for part in wrapped:
            print(f"  \033[31m{part}\033[0m" if _color else f"  {part}")
        return None
    if result is not None:
        _show(repr(result))
    return result


_color = False


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    global _color
    parser = argparse.ArgumentParser(prog="stepfsm demo", description=__doc__)
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)
    import sys

    _color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())

    _section("1. Load a step, then re-run the cell that loads it")
    first_line, *rest = CLASS_SOURCE.splitlines()
    _code(first_line)
    for line in rest:
        _show(f"... {line}")
    llm = TinyLLM("gen_0")
    _attempt("llm = TinyLLM('gen_0'); llm.load()", llm.load)
    _attempt("llm.load()   # the same cell, run again", llm.load)
    _attempt(
        "stepfsm.ensure_loaded(llm)   # idempotent: no second load",
        lambda: stepfsm.ensure_loaded(llm),
    )
    _attempt("llm.generate('hi')", lambda: llm.generate("hi"))
    print(f"  (load() ran {TinyLLM.loads} time; one copy of the weights exists)")

    _section("2. Use before load, unload before load")
    fresh = TinyLLM("gen_1")
    _attempt("TinyLLM('gen_1').generate('hi')", lambda: fresh.generate("hi"))
    _attempt("TinyLLM('gen_1').unload()   # a no-op, not an AttributeError", fresh.unload)

    _section("3. Sixteen threads race to load one step")
    racer = TinyLLM("racer", load_seconds=0.2)
    before = TinyLLM.loads
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def race() -> None:
        barrier.wait()
        results.append(stepfsm.ensure_loaded(racer))

    threads = [threading.Thread(target=race) for _ in range(16)]
    _code("16 x threading.Thread(target=lambda: stepfsm.ensure_loaded(racer))")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(
        f"  load() ran {TinyLLM.loads - before} time; {results.count(True)} thread loaded, "
        f"{results.count(False)} waited and reused it; state: {stepfsm.state(racer).value}"
    )

    _section("4. A load that fails, and the recovery")
    flaky = TinyLLM("flaky", load_seconds=0.05, fail_first=1)
    _attempt("flaky = TinyLLM('flaky', load_seconds=0.05, fail_first=1); flaky.load()", flaky.load)
    _code("stepfsm.lifecycle(flaky).state, stepfsm.lifecycle(flaky).error")
    lc = stepfsm.lifecycle(flaky)
    _show(f"({lc.state.value!r}, {lc.error!r})")
    _attempt("flaky.generate('hi')", lambda: flaky.generate("hi"))
    _attempt("flaky.load()   # cleans up first, then loads", flaky.load)
    _show(f"state: {lc.state.value}")

    _section("5. Ctrl-C in the middle of a load")
    if threading.current_thread() is threading.main_thread():
        slow = TinyLLM("slow", load_seconds=30)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            presser = _press_ctrl_c(slow)
            _attempt(
                "slow = TinyLLM('slow', load_seconds=30); slow.load()   # then Ctrl-C",
                slow.load,
            )
            presser.join()
        finally:
            signal.signal(signal.SIGINT, previous)
        _show("(the demo pressed Ctrl-C for you: a real SIGINT, 0.05 s into the 30 s load)")
        _show(
            f"state: {stepfsm.state(slow).value} (never stuck in 'loading'); "
            "any thread can act on it at once:"
        )
        _attempt("slow.unload()   # frees the half-loaded weights", slow.unload)
        _show(f"state: {stepfsm.state(slow).value}, weights: {slow.weights}")
    else:  # pragma: no cover - signals reach only the main thread
        _show("(skipped: Ctrl-C can only be shown when the demo runs in the main thread)")

    _section("6. The history of 'flaky'")
    for record in lc.history:
        error = f"  {type(record.error).__name__}" if record.error else ""
        _show(
            f"{record.trigger:<14} {record.source.value:>9} -> {record.dest.value:<9} "
            f"{record.duration * 1000:7.1f} ms{error}"
        )

    _section("7. stepfsm.status(): every live step in this process")
    _show(stepfsm.status())

    _section("8. stepfsm.unload_all()")
    _attempt("stepfsm.unload_all()", stepfsm.unload_all)

    _section("9. Three models, room for two: a budget")
    _code('stepfsm.budget("gpu:0", 64 * 2**20)   # each TinyLLM takes 32 MiB')
    stepfsm.budget("gpu:0", 64 * 2**20)
    trio = [TinyLLM(name, load_seconds=0.05) for name in ("writer", "judge", "critic")]
    for model in trio:
        stepfsm.lifecycle(model).cost = ("gpu:0", 32 * 2**20)
    _code('for m in (writer, judge, critic): stepfsm.lifecycle(m).cost = ("gpu:0", 32 * 2**20)')
    writer, judge, critic = trio
    _attempt("writer.load(); judge.load(); writer.generate('hi')", lambda: _two(writer, judge))
    _attempt("critic.load()   # no room: the least recently used idle model goes", critic.load)
    _show(", ".join(f"{m.name}: {stepfsm.state(m).value}" for m in trio))
    _show(f"why: {stepfsm.lifecycle(judge).history[-1].reason}")
    stepfsm.lifecycle(judge).timeout = 0.2
    _attempt(
        "with stepfsm.loaded(writer), stepfsm.loaded(critic): judge.load()   # both held",
        lambda: _held_load(writer, critic, judge),
    )
    _show(stepfsm.status().pools[0])
    stepfsm.unload_all()

    try:  # the distilabel story (sections 10-12), when distilabel is installed
        import distilabel  # noqa: F401
    except ImportError:
        return 0
    from ._demo_distilabel import run

    run(_section, _attempt, _code, _show, first=10, width=WIDTH)
    return 0
