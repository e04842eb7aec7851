"""Scheduling: claims, failover, retries, timeouts. Set-based, fenced by `attempt`."""
