"""A training run: build, the loop, checkpoints and resume, evaluation, the run's artifacts, the optimizer."""
