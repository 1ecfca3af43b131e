"""Benchmarks: ``python -m benchmarks.<name> --out FILE.json`` writes JSON and prints a markdown table."""
