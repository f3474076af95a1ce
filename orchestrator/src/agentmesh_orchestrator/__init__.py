"""The agentmesh orchestrator: HTTP API, planning loop and the orchestrator CLI."""
