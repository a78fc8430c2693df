"""Alias of `neftune.integrations.sft_trainer`, kept so `neftune.trl.NEFTuneSFTTrainer` keeps working."""

from .integrations.sft_trainer import NEFTuneSFTConfig, NEFTuneSFTTrainer, SFTConfig, SFTTrainer

__all__ = ["NEFTuneSFTConfig", "NEFTuneSFTTrainer", "SFTConfig", "SFTTrainer"]
