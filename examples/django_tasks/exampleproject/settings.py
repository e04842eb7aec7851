"""A minimal Django project whose tasks run on taskhub (see ../README.md). The hub's address and an
API key (tasks:read, tasks:write) come from TASKHUB_URL and TASKHUB_API_KEY."""

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django_tasks", "reports"]
DATABASES: dict[str, dict[str, str]] = {}  # the example's tasks need none

TASKS = {
    "default": {
        "BACKEND": "taskhub_client.django_tasks.TaskhubBackend",
        "QUEUES": ["default", "reports"],
        "OPTIONS": {
            "url": os.environ.get("TASKHUB_URL", "http://127.0.0.1:8000"),
            "key": os.environ.get("TASKHUB_API_KEY", ""),
            # queue name -> taskhub task type (a unit of that type runs the queue)
            "task_types": {"default": "DJANGO_DEFAULT", "reports": "DJANGO_REPORTS"},
            "max_retries": 0,  # taskhub's own: no automatic retry unless a task asks for one
            "timeout_seconds": 300,
        },
    }
}
