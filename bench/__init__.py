"""Benchmarks (run as scripts, e.g. ``python bench/eventstore.py --quick``)."""
