"""The one base class of every error a user can cause (bad input, config, environment limits).

The CLI prints these in one line and exits 1; any other exception is a bug and keeps its traceback.
Each subclass also derives from the builtin it refines (``ValueError``, ``RuntimeError``, ...), so
callers that catch those keep working.
"""

from __future__ import annotations


class RvcIndexError(Exception):
    """An error the user can act on: the message names the file, key or limit and what to change."""
