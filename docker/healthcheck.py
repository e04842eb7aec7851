"""Container health check for the web service: GET /api/v1/health on the local gunicorn.

Exit 0 when it answers 200, 1 otherwise (Docker's HEALTHCHECK contract). Standard library only, so
it costs no Django start-up. In production Django refuses a Host not in ALLOWED_HOSTS and redirects
plain HTTP to HTTPS, so the probe sends the first allowed host name and `X-Forwarded-Proto: https`
(the header the TLS-terminating proxy sets; see SECURE_PROXY_SSL_HEADER in taskhub/settings.py).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PATH = "/api/v1/health"


def probe_host(allowed_hosts: str) -> str:
    """A Host header value that the comma-separated ALLOWED_HOSTS accepts."""
    for entry in allowed_hosts.split(","):
        entry = entry.strip()
        if entry and entry != "*":
            # ".example.com" also matches "example.com" itself.
            return entry.lstrip(".")
    # Unset (development defaults include localhost) or "*" (anything goes).
    return "localhost"


def main() -> int:
    port = os.environ.get("PORT", "").strip() or "8000"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}",
        headers={"Host": probe_host(os.environ.get("ALLOWED_HOSTS", "")), "X-Forwarded-Proto": "https"},
    )
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"health check: {PATH} unreachable: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"health check: {PATH} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
