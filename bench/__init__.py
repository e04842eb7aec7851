"""Benchmarks: taskhub against the physical limit and against Celery (see BENCHMARKS.md)."""
