"""What a command can fail with, and the one boundary that turns any failure into one line.

Every `transfer-gateway` command runs inside `boundary`: an `OperatorError` is printed as
`error: <what, naming the file, setting or address>` and, when it helps, `hint: <what to do>`;
the exit code says what kind of failure it was, so a supervisor can tell a configuration that
will never start (78: systemd stops restarting, see deploy/systemd) from a dependency that may
come back (69: restart later). A failure nobody foresaw is one line too, with its traceback in
the log at DEBUG.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Final, TextIO

from gateway.core.errors import StoreUnavailable

log = logging.getLogger("gateway.app")

_MAX_DETAIL: Final = 300  # characters of a library's own message kept in an error line


class ExitCode(IntEnum):
    """The process's exit status, by kind of failure (BSD sysexits where one fits)."""

    OK = 0
    FAILURE = 1         # anything else: a refused call, a failed check, a bug
    USAGE = 2           # the command line itself (argparse's own convention)
    UNAVAILABLE = 69    # EX_UNAVAILABLE: a port in use, a database that refuses, a gateway not answering
    CONFIG = 78         # EX_CONFIG: a setting, or a file a setting names, is wrong; retrying cannot help
    INTERRUPTED = 130   # Ctrl-C


class OperatorError(Exception):
    """A failure the operator can act on. `message` names the file, setting or address;
    `hint` says what to do about it ("" when the message says it all)."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(OperatorError):
    """A setting, or a file a setting points to, cannot be used. `problems` lists every one found
    (the message is the first)."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: str | Sequence[str], *, hint: str = "") -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        first = self.problems[0]
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""),
                         hint=hint)


class Findings(OperatorError):
    """A check that ran and found problems (`transfer-gateway log verify`): one line each."""

    def __init__(self, problems: Sequence[str], *, hint: str = "") -> None:
        if not problems:
            raise ValueError("Findings needs at least one problem")
        self.problems = tuple(problems)
        super().__init__(self.problems[0], hint=hint)


class Unavailable(OperatorError):
    """Something the command needs is not there now (a port in use, a database or gateway that does
    not answer); the same command may succeed later."""

    exit_code = ExitCode.UNAVAILABLE


def bounded(text: object, limit: int = _MAX_DETAIL) -> str:
    """A library's message on one line, cut to `limit` characters (it may echo input)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def report(error: BaseException, stream: TextIO) -> ExitCode:
    """Print `error` as the command's last word; return the exit code for it."""
    if isinstance(error, ConfigError | Findings) and len(error.problems) > 1:
        for problem in error.problems:
            print(f"error: {problem}", file=stream)
        code = error.exit_code
        hint = error.hint
    elif isinstance(error, OperatorError):
        print(f"error: {error.message}", file=stream)
        code, hint = error.exit_code, error.hint
    elif isinstance(error, StoreUnavailable):
        print(f"error: {bounded(error.message)}", file=stream)
        code, hint = ExitCode.UNAVAILABLE, ""
    else:
        print(f"error: unexpected {type(error).__name__}: {bounded(error)}", file=stream)
        code, hint = ExitCode.FAILURE, "run again with --log-level DEBUG for the traceback, and report it"
    if hint:
        print(f"hint: {hint}", file=stream)
    stream.flush()
    return code


def boundary(command: Callable[[], int], stream: TextIO | None = None) -> int:
    """Run `command`; whatever it raises ends as one `error:` line (and a hint) and an exit code."""
    out = stream if stream is not None else sys.stderr
    try:
        return command()
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as error:
        if not isinstance(error, OperatorError | StoreUnavailable):
            log.debug("traceback of the failure", exc_info=error)
        return report(error, out)
