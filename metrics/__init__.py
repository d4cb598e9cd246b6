"""Metrics: every figure of the metrics API and the dashboard (docs/METRICS.md). `selectors`
computes the figures, `reports` parses, scopes and caches them, `services` writes the snapshots
and the precomputed facts (`activity`, `stage_durations`, `channels`)."""
