"""The coder worker: a Celery consumer of the code queue that runs Python in a sandbox."""
