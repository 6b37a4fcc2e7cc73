"""``stepfsm demo`` tells the distilabel story when distilabel is installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.distilabel import require

require("distilabel")

pytestmark = pytest.mark.slow


def test_demo_tells_the_distilabel_story(
    run_python: Callable[..., dict[str, tuple[int, str]]], tmp_path: Path
) -> None:
    """The demo's distilabel sections show each outcome, and write nothing outside tmp."""
    ((returncode, output),) = run_python(
        {"demo": ["-m", "stepfsm", "demo", "--color", "never"]}, timeout=120
    ).values()
    assert returncode == 0, output[-3000:]
    story = " ".join(output[output.find("10. distilabel") :].split())  # undo the wrapping
    for expected in (
        "NotLoadedError: OfflineLLM at 0x",
        "AlreadyLoadedError: OfflineLLM at 0x",
        ">>> stepfsm.ensure_loaded(llm) False",
        "DuplicateLoadWarning: OfflineLLM at 0x",
        "['echo: hi', 'echo: hello']",
        "in this process load() ran 0 more times, and llm kept its weights: True",
        ": loaded since",
    ):
        assert expected in story, f"missing {expected!r} in:\n{story}"
    home = tmp_path / "home"
    assert not any(home.iterdir()), f"the demo wrote into HOME: {list(home.rglob('*'))}"
