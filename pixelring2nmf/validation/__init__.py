"""Validation research and test helpers: the original pipeline, mismatched maps, scoring
against a simulation's truth, and a local MLServer for tests and benchmarks. Used by bench/
and tests/, never by a command."""
