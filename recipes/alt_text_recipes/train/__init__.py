"""The model layer (families, loading and adapters, collators, parallelism, strategies, random-weights models)
and the run (arguments and defaults, the recipes, the training loop, the Trainer, two stages)."""
