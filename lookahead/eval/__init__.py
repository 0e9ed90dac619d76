"""Evaluation helpers: benchmark tasks and answer checking."""
