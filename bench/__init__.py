"""Reproducible benchmarks of the broker against a bare Litestar baseline (``python -m bench.run``).

See ``bench/README.md`` for the command, the scenarios and how to read the results.
"""
