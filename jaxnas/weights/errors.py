"""The one error type of weight import: a user-facing problem, printed as one `error:` line."""
from __future__ import annotations

from jaxnas.errors import UserError


class WeightsError(UserError, ValueError):
    """A weights file or a model choice that cannot be imported (the message names the fix)."""
