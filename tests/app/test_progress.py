"""The live progress line: drawn in place on a terminal, nothing at all anywhere else."""

from __future__ import annotations

import io

from gateway.app.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_then_erased() -> None:
    out = Terminal()
    with Progress.start("messages loaded", total=1000, stream=out) as progress:
        progress.label("messages loaded")  # a forced redraw
        progress.update(400)
        progress.label("messages loaded")
    text = out.getvalue()
    assert "\r\x1b[K  messages loaded 400/1,000 (40%) " in text
    assert text.endswith("\r\x1b[K") and "\n" not in text


def test_elsewhere_nothing_is_written() -> None:
    out = io.StringIO()
    with Progress.start("cases completed", total=5, stream=out) as progress:
        progress.update(3)
        progress.label("still")
    assert out.getvalue() == ""
