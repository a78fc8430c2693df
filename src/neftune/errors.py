"""Exceptions raised by neftune."""

from __future__ import annotations


class NEFTuneError(ValueError):
    """A value given to neftune cannot be used; the message names the value and the fix."""
