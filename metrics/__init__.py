"""Metrics: every figure of the metrics API and the dashboard's Metrics page (docs/METRICS.md).

`selectors` computes the figures, `reports` parses, scopes and caches them, `services` writes
the snapshots and the precomputed facts, which answer any range of the stored days: `activity`
(overview, revenue, the cohorts' current month), `stage_durations` (stages, flows) and
`channels` (channel attribution).
"""
