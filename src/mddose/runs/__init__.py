"""A training run on disk: its configuration (:mod:`.run_config`: model + data + diffusion + train, saved as
``config.json``) and its checkpoints (:mod:`.checkpoint`: weights, EMA, optimizer, RNG, step)."""
