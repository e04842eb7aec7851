"""Reliability tooling: the chaos harness (`python -m chaos`, `make chaos`) and the API fuzz run
(`python -m chaos.fuzz`). See docs/reliability.md."""
