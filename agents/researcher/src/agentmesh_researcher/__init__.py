"""The researcher worker: a Celery consumer of the research queue."""
