"""Predictions, metrics and comparisons, all computed from stored per-image predictions."""
