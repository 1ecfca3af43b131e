"""Benchmarks behind `wsi-pipeline bench NAME` (also `python -m workflows.bench.NAME --out DIR`): JSON + a markdown table."""
