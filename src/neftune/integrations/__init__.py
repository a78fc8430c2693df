"""transformers and up: the callback, the drop-in TRL trainer, the clean-loss probe, the transformers patch and the
axolotl plugin."""
