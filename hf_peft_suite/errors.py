"""The one exception type for a user's mistake.

Anything raised as :class:`UsageError` is shown by the CLI as one line (``error: ...``) with exit code 2 and no
traceback. Its message names the problem and the fix.
"""


class UsageError(ValueError):
    """A problem with the user's input (arguments, data, saved files) rather than a bug in this package."""
