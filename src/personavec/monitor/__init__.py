"""Monitoring: per-token projections during generation, the reading log and the live display."""
