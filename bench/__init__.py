"""pyflows benchmarks (not part of the package): see bench/run.py and docs/benchmarks.md."""
