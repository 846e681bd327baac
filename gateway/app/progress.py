"""A live progress line for long commands, on a terminal only.

Written to stderr and redrawn in place (`\\r`, erase to end of line) at most ten times a second;
when stderr is not a terminal (a log file, a pipe, CI) nothing is written, so logs stay clean and
output meant for programs (`--json`) is never interleaved with it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO

_REDRAW: Final = 0.1  # seconds between redraws at most


class Progress:
    """`label done/total (pct) elapsed`, or `label elapsed` when the total is unknown."""

    def __init__(self, label: str, *, total: int | None = None, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self._stream, "isatty", lambda: False)())
        self._label = label
        self._total = total
        self._done = 0
        self._started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()  # bulk loads report from worker threads

    def update(self, done: int, total: int | None = None) -> None:
        """`done` of `total` (or of the total given at first) so far."""
        self._done = done
        if total is not None:
            self._total = total
        self._draw()

    def advance(self, count: int = 1) -> None:
        self.update(self._done + count)

    def label(self, text: str) -> None:
        self._label = text
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._drawn < _REDRAW:
                return
            self._drawn = now
            elapsed = f"{now - self._started:,.0f} s"
            if self._total:
                share = min(self._done / self._total, 1.0)
                text = f"{self._label} {self._done:,}/{self._total:,} ({share:.0%}) {elapsed}"
            elif self._done:
                text = f"{self._label} {self._done:,} {elapsed}"
            else:
                text = f"{self._label}… {elapsed}"
            self._stream.write(f"\r\x1b[K  {text}")
            self._stream.flush()

    def close(self) -> None:
        """Erase the line (what the command prints next takes its place)."""
        if self.enabled:
            with self._lock:
                self._stream.write("\r\x1b[K")
                self._stream.flush()

    @classmethod
    @contextmanager
    def start(cls, label: str, *, total: int | None = None, stream: TextIO | None = None) -> Iterator[Progress]:
        """A progress line for the duration of a block; its clock ticks even while nothing reports
        (a migration, a bulk load in another process)."""
        progress = cls(label, total=total, stream=stream)
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                progress._draw(force=True)

        ticker = threading.Thread(target=tick, name="progress", daemon=True) if progress.enabled else None
        if ticker is not None:
            progress._draw(force=True)
            ticker.start()
        try:
            yield progress
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            progress.close()
