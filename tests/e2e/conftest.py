"""The e2e tier: the real compose mesh in Docker, with the scripted model.

It runs as its own compose project (agentmesh-e2e) with its own API port and
volumes, so a developer's running mesh is untouched; the Makefile tears it down
whatever the outcome and keeps pytest's exit code.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chroma_server import free_port

ROOT = Path(__file__).resolve().parents[2]
# AGENTMESH_E2E_PROJECT lets several checkouts run the tier side by side.
PROJECT = os.environ.get("AGENTMESH_E2E_PROJECT", "agentmesh-e2e")
# The outside world's network is a block of TEST-NET-2 (198.51.100.0/24); two
# projects' networks may not overlap, so each project takes one of its sixteen /28s.
_BLOCK = 16 * (zlib.crc32(PROJECT.encode()) % 16)
OUTSIDE_SUBNET = f"198.51.100.{_BLOCK}/28"
OUTSIDE_IP = f"198.51.100.{_BLOCK + 10}"
# The outside world: a test HTTP server only the egress proxy can reach.
OUTSIDE_WORLD = ROOT / "tests" / "e2e" / "compose.outside.yaml"
FETCH_ALLOWLIST = "allowed.example.test"


def _compose_base() -> list[str]:
    configured = os.environ.get("AGENTMESH_COMPOSE")
    if configured:
        return shlex.split(configured)
    if (
        subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"]


@dataclass
class ComposeMesh:
    env_file: Path
    api_port: int

    @property
    def base(self) -> list[str]:
        return [
            *_compose_base(),
            *("-f", str(ROOT / "compose.yaml"), "-f", str(OUTSIDE_WORLD)),
            "--env-file",
            str(self.env_file),
            "-p",
            PROJECT,
            "--profile",
            "scripted",
        ]

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*self.base, *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input_text,
                check=False,
            )

        proc = run()
        if args[:1] == ("exec",) and "ModuleNotFoundError" in proc.stderr:
            # Seen once in a busy run: a fresh interpreter in a container found no
            # anthropic/types/beta/<module>.py (1,028 files in that directory) that the
            # image holds, and the same image imported it at once afterwards: this
            # machine's storage driver (fuse-overlayfs) listed the directory short. A
            # module really missing fails the second time too.
            print(f"compose exec: {proc.stderr.strip().splitlines()[-1]}: once more")
            proc = run()
        if check and proc.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def wait_healthy(self, timeout: int = 300) -> None:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "wait-healthy.sh"), *self.base],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "WAIT_TIMEOUT_S": str(timeout)},
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return [c for c in out if c]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.compose(
            "exec", "-T", "orchestrator", "orchestrator", *args, timeout=timeout, check=False
        )

    def inspect(self, container: str) -> dict[str, object]:
        out = subprocess.run(
            ["docker", "inspect", container], capture_output=True, text=True, check=True
        ).stdout
        data: dict[str, object] = json.loads(out)[0]
        return data

    def logs(self) -> str:
        """The mesh's recent logs, without the collector's and the outside world's
        (a line every few seconds each, which would push the agents' out of view)."""
        out = self.compose("logs", "--no-color", "--tail=40", check=False).stdout
        noisy = ("otel-collector", "outside")
        kept = [line for line in out.splitlines() if not line.startswith(noisy)]
        return "\n".join(kept)[-20000:]


# The repositories the MCP git sidecar serves in this tier: one, with a known commit.
REPOS = ROOT / "build" / "e2e-repos"
REPO_COMMIT_MESSAGE = "e2e fixture: the answer is forty-two"


def _make_repos() -> None:
    repo = REPOS / "demo"
    shutil.rmtree(REPOS, ignore_errors=True)
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("a repository for the MCP git sidecar\n")
    git = ["git", "-C", str(repo), "-c", "user.name=e2e", "-c", "user.email=e2e@example.test"]
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "README.md"],
        ["commit", "-q", "-m", REPO_COMMIT_MESSAGE],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True)
    # The sidecar's uid must read it through the read-only mount.
    for entry in [REPOS, *REPOS.rglob("*")]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)


def _write_env(path: Path, api_port: int) -> None:
    images = (ROOT / "build" / "images.env").read_text()
    _make_repos()
    path.write_text(
        f"COMPOSE_PROJECT_NAME={PROJECT}\nAGENTMESH_ROOT={ROOT}\n{images}\n"
        "AGENTMESH_MODE=scripted\nCOMPOSE_PROFILES=scripted\nANTHROPIC_BASE_URL=http://llm:8090\n"
        "AGENTMESH_SCRIPTED_API_KEY=scripted-model-no-key-needed\n"
        f"AGENTMESH_API_PORT={api_port}\nSCRIPTED_LLM_DELAY_MS=150\nAGENTMESH_WORKER_CONCURRENCY=16\n"
        # A short wall clock, so the sandbox tests see a run killed at it quickly.
        "AGENTMESH_SANDBOX_WALL_S=8\n"
        # One API credential drives every test client here (the fuzz tier too); the
        # flood limits have tests of their own in the integration tier.
        "AGENTMESH_API_RATE_PER_S=500\nAGENTMESH_API_BURST=1000\nAGENTMESH_API_CONCURRENCY=256\n"
        f"AGENTMESH_FETCH_ALLOWLIST={FETCH_ALLOWLIST}\n"
        f"AGENTMESH_MCP_REPOS={REPOS}\n"
        # The egress proxy publishes Flower's port too: a free one, like the API's.
        f"AGENTMESH_FLOWER_PORT={free_port()}\n"
        f"E2E_OUTSIDE_SUBNET={OUTSIDE_SUBNET}\nE2E_OUTSIDE_IP={OUTSIDE_IP}\n"
    )


@pytest.fixture(scope="session")
def compose_mesh() -> Iterator[ComposeMesh]:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0
    ):
        pytest.fail("the e2e tier needs a running Docker engine (docker info failed)")
    if not (ROOT / "build" / "images.env").exists():
        pytest.fail("build/images.env is missing: run `make images` (make test-e2e does)")
    subprocess.run([str(ROOT / "scripts" / "secrets.sh")], check=True, cwd=ROOT)
    env_file = ROOT / "build" / "e2e.env"
    mesh = ComposeMesh(env_file=env_file, api_port=free_port())
    _write_env(env_file, mesh.api_port)
    mesh.compose("down", "--remove-orphans", "--volumes", check=False)
    try:
        mesh.compose("up", "-d", "--remove-orphans")
        mesh.wait_healthy()
        yield mesh
    finally:
        mesh.compose("down", "--remove-orphans", "--volumes", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and "compose_mesh" in getattr(item, "funcargs", {}):
        report.sections.append(("compose logs", item.funcargs["compose_mesh"].logs()))
    return report
