"""The one exception type for a user's mistake, and warnings for what is allowed but likely one.

Anything raised as :class:`UsageError` is shown by the CLI as one line (``error: ...``) with exit code 2 and no
traceback. Its message names the problem and the fix. :func:`warn` prints one ``warning: ...`` line and lets the run
go on.
"""


import os
import sys


class UsageError(ValueError):
    """A problem with the user's input (arguments, data, saved files) rather than a bug in this package."""


class ProcessesStopped(RuntimeError):
    """A failure on one of several processes launched together, which the others cannot go on without (they would wait
    for it in a collective until the 30-minute timeout): the CLI prints one ``error:`` line and exits with code 1, and
    the launcher stops the other processes."""


def is_main_process() -> bool:
    """Whether this is the first of the processes a launcher started (or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def warn(message: str) -> None:
    """One ``warning:`` line on stderr for what is allowed but likely a mistake; the run goes on.

    Printed by the first process only, when several were launched together.
    """
    if is_main_process():
        print(f"warning: {message}", file=sys.stderr)
