"""The code on docs/extending.md runs: its python blocks, in order, in one namespace, as a reader would,
and each ``text`` block shows lines the code really prints."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Numbers may differ in the last digits from machine to machine; the words and the verdicts may not.
NUMBER = re.compile(r"\d+\.\d+(e[+-]\d+)?%?")


def blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def normalised(line: str) -> str:
    return " ".join(NUMBER.sub("#", line).split())


def test_the_fence_reader_finds_every_block():
    text = "a\n```python\nx = 1\n```\n```text\nout\n```\n```python\ny = 2\n```\n"
    assert FENCE.findall(text) == [("python", "x = 1\n"), ("text", "out\n"), ("python", "y = 2\n")]
    assert normalised("alpha   (3,)    1.8e+00  FAIL") == normalised("alpha (3,) 2.5e-01 FAIL") != "alpha (2,) # FAIL"


def test_extending_md_runs_and_prints_what_it_shows():
    text = (DOCS / "extending.md").read_text(encoding="utf-8")
    code = blocks(text, "python")
    assert len(code) >= 6, "the page lost its examples"
    namespace: dict = {"__name__": "extending_md"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for number, block in enumerate(code, start=1):
            exec(compile(block, f"docs/extending.md, code block {number}", "exec"), namespace)  # noqa: S102 - our own page
    actual = {normalised(line) for line in printed.getvalue().splitlines()}
    shown = [line for body in blocks(text, "text") for line in body.splitlines() if line.strip()]
    assert len(shown) > 20
    for line in shown:
        assert normalised(line) in actual, f"docs/extending.md shows a line its code does not print: {line!r}"
    assert namespace["accuracy"] > 0.9 and namespace["report"].failed == ["alpha"]
