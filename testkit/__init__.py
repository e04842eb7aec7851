"""Support shared by the tests, the benchmarks (bench/), the chaos run (chaos/) and `make demo`:
free ports, bounded waiting, processes started from the tree, a hub process (runhub or gunicorn)
and the shared MariaDB and Redis servers. Development only: the hub's wheel ships `taskhub`, `tasks`
and `units` (pyproject's packages.find), the unit SDK's (clients/unit) `taskhub_unit`, not this package.

It imports only the standard library at module level (and the MySQL and Redis clients where
they are used), so `make demo` runs it on the runtime install alone.
"""
