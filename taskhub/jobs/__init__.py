"""The periodic jobs as the hub runs them: the registry (each job's name, function and interval,
declared once), the runner that times and logs a run, and the Celery tasks beat calls."""
