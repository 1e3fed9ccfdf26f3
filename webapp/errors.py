"""What a visitor is told: a refused request (`UserError`) or a remark about a finished one (`Note`).

Messages are written for the person at the browser: what went wrong in their terms and what to do.
Operator instructions (environment variables, command-line flags) never go here: they go to the
server log and the operator banner.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(ValueError):
    """The request cannot be done as sent; the message (plain text, no Markdown) is shown as is."""


@dataclass(frozen=True)
class Note:
    """A remark about a finished request. `loud` notes change what the visitor asked for (ignored class
    names, truncated prompts) and are shown as a toast; the others are a quiet line in the status."""

    text: str
    loud: bool = False
