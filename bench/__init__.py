"""Benchmarks behind ``make bench``: they print tables and assert nothing."""
