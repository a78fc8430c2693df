"""Alias of `neftune.integrations.callback`, kept so `from neftune.callback import NEFTuneCallback` keeps working."""

from .integrations.callback import NEFTuneCallback

__all__ = ["NEFTuneCallback"]
