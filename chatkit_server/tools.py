"""Built-in function tools that workflows can list by import path.

Example, in a workflows file::

    tools = ["chatkit_server.tools:current_time"]

A tool of your own that needs the session's workflow state variables takes
the run context first and reads them with :func:`state_variables`.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatkit_server.workflows.state import state_variables

__all__ = ["current_time", "state_variables"]


def current_time(timezone: str = "UTC") -> str:
    """Return the current date and time in an IANA time zone.

    Models do not know the time; this tells them.

    Args:
        timezone: An IANA time zone name such as "Europe/Paris" or "UTC".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"Unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'."
    return datetime.now(zone).strftime("%A %d %B %Y, %H:%M:%S %Z")
