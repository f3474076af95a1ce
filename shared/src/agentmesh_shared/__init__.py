"""agentmesh shared library: settings, models, Celery app, agent loop, memory, telemetry."""
