"""Training: the engine that fits models, and the background jobs that run it."""
