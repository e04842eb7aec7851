"""The console's one way to write a time: ISO-like, with seconds (UTC: TIME_ZONE). Django's English
default ("Dec. 1, 2026, 5:22 p.m.") drops the seconds and differs from the lists and the API."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
