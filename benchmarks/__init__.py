"""Benchmarks (never timed tests): `nftlens bench …` (bench.py), the soak script, and the helper that
runs the real service in a subprocess (serverproc.py, shared with the HTTP tests)."""
