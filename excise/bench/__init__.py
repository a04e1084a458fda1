"""Benchmarks behind `excise bench ...`; results go to benchmarks/."""
