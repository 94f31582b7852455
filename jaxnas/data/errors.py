"""The single error type raised for missing or malformed data sources."""

from __future__ import annotations

import difflib
from typing import Iterable

from jaxnas.errors import UserError


class DataError(UserError, ValueError):
    """A data source is missing, malformed or misconfigured; the message says how to fix it."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return " did you mean 'x'?" for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" did you mean {close[0]!r}?" if close else ""
