"""The one base class of every error a user can cause and fix (a bad config key, a missing data dir,
an unreachable target, a corrupt checkpoint, ...).

The CLI catches `UserError` alone: it prints each line of the message as ``error: ...`` and exits with
status 2. Anything else is a bug and keeps its traceback. Subclasses also derive from the builtin class
that describes them (ValueError, RuntimeError), so library callers can catch either.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem in what the user asked for; ``str(err)`` names it and the fix (one line per problem)."""
