"""Ways into frameworks that already set `neftune_noise_alpha`: the transformers patch and the axolotl plugin."""
