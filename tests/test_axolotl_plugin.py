"""The axolotl plugin's logic on real transformers trainers (axolotl itself: `make test-axolotl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
from test_transformers_patch import HookCensus, trainer

from neftune import NEFTuneError
from neftune.integrations.axolotl import NEFTuneArgs, NEFTunePlugin, config_from_cfg


def test_the_plugin_takes_neftune_noise_alpha_over_from_transformers(tokenizer: Any, tmp_path: Path) -> None:
    census = HookCensus()
    run = trainer(tokenizer, tmp_path, census, neftune_noise_alpha=5.0)
    NEFTunePlugin().post_trainer_create({"neftune_noise_alpha": 5.0, "neftune_scaling": "per_sequence"}, run)
    run.train()
    assert census.ours == [1, 1, 1, 1] and census.theirs == [0, 0, 0, 0]
    assert {e["neftune/alpha"] for e in run.state.log_history if "neftune/alpha" in e} == {5.0}


def test_the_plugin_covers_trainers_that_dropped_the_flag(tokenizer: Any, tmp_path: Path) -> None:
    """axolotl's RL builder does not pass neftune_noise_alpha on: the plugin reads it from the YAML."""
    census = HookCensus()
    run = trainer(tokenizer, tmp_path, census)
    NEFTunePlugin().post_trainer_create({"neftune_noise_alpha": 3.0, "neftune_noise": "gaussian"}, run)
    run.train()
    assert census.ours == [1, 1, 1, 1]


def test_config_from_cfg() -> None:
    assert config_from_cfg({}) is None and config_from_cfg({"neftune_noise_alpha": 0}) is None
    config = config_from_cfg({"neftune_noise_alpha": 5, "neftune_schedule": "cosine", "neftune_seed": 3})
    assert config is not None and (config.alpha, config.schedule, config.seed) == (5.0, "cosine", 3)
    with pytest.raises(NEFTuneError, match=r"axolotl config: NEFTune scaling must be one of"):
        config_from_cfg({"neftune_noise_alpha": 5, "neftune_scaling": "per_row"})
    with pytest.raises(NEFTuneError, match="neftune_noise_alpha must be >= 0"):
        config_from_cfg({"neftune_noise_alpha": -1})
    assert NEFTunePlugin().get_input_args() == "neftune.integrations.axolotl.NEFTuneArgs"


def test_the_schema_validates_the_options() -> None:
    pytest.importorskip("pydantic")  # axolotl's dependency; older transformers do not bring it
    assert NEFTuneArgs(neftune_scaling="padded").neftune_scaling == "padded"
    with pytest.raises(ValueError, match="neftune_scaling"):
        NEFTuneArgs(neftune_scaling="per_row")
