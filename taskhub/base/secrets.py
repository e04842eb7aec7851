"""Secrets kept out of what Django prints: technical error pages (DEBUG), error e-mails and logs
of settings. Django hides settings and request headers whose names look secret (KEY, SECRET,
PASS, TOKEN, ...); this also hides every URL and LOCATION (a Redis or broker URL carries its
password) and scrubs `user:password@` out of any string value it shows."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

CREDENTIALS_IN_URL = re.compile(r"(?<=://)[^/@\s]*:[^/@\s]*@")
HIDDEN = re.compile(r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|LOCATION|DSN", flags=re.I)


def scrub(text: str) -> str:
    """`redis://:pw@host` -> `redis://********@host`."""
    return CREDENTIALS_IN_URL.sub("********@", text)


class SecretFilter(SafeExceptionReporterFilter):
    hidden_settings = HIDDEN

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return scrub(cleansed) if isinstance(cleansed, str) else cleansed
