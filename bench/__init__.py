"""Benchmarks: each module's main() measures one thing and returns its figures; `python -m bench` runs them all."""
