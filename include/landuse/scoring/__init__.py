"""Scoring: tiles through a model bundle, in-process for small jobs or fanned out on Spark."""
