"""The bottom layer: what every other package may use and that imports none of them.

Errors, actors, row loading and the plain-SQL helpers of the hot paths, the lock-error retry, the
metrics recorders (counters only) and the `Viewer` that selectors take. Enforced by the
import-linter contracts in pyproject.toml (`lint-imports`, run by `make lint`).
"""
