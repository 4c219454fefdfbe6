"""Metrics: how good generated images are.

``dd.metrics.digits``: the digits classifier of the embedded default (class accuracy, FID in
its features, an LPIPS-like ``feature_distance``). Metrics import the teachers' core
(checkpoint loading, the shipped weights folder), never the tiny teachers' package.
"""
