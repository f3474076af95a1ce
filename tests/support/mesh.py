"""The mesh as local processes: real redis-server, Chroma, scripted model, orchestrator
and worker processes, each on a free loopback port, for the integration tier.

Credentials as in the compose mesh: redis-server loads the ACL file that
docker/broker/acl.sh writes (one user per role, ``default`` off), each process
connects as its role's user, and the API wants its bearer token. The harness itself
uses an extra ``admin`` Redis user (``redis_url``) and the token (``api``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from tests.support.chroma_server import free_port, start_chroma
from tests.support.collector import start_collector

BIN = Path(sys.executable).parent
# Each caller's credential for a gateway started by LocalMesh.start_gateway.
GATEWAY_TOKENS = {"orchestrator": "tok-orch", "researcher": "tok-research", "coder": "tok-coder"}
ACL_SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "broker" / "acl.sh"
REDIS_USERS = ("orchestrator", "researcher", "coder", "flower", "health", "gateway")


class NotReadyError(Exception):
    pass


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Retry ``check`` with backoff until it returns true; fail naming ``what``."""

    def attempt() -> None:
        if not check():
            raise NotReadyError(what)

    for try_ in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception_type((NotReadyError, httpx.HTTPError, redis.RedisError, OSError)),
        reraise=True,
    ):
        with try_:
            attempt()


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def redis_server_bin() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server"
        )
    return found


@dataclass
class LocalMesh:
    root: Path
    llm_delay_ms: int = 0
    # Where the scripted model appends a line per request as it arrives (--arrivals).
    llm_arrivals: Path | None = None
    redis_port: int = field(default_factory=free_port)
    llm_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    chroma_url: str = ""
    otlp_endpoint: str = ""
    traces_file: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    orchestrator_env: dict[str, str] = field(default_factory=dict)
    # Settings every process of this mesh gets, over its own (tests/bench/ab.py's sides).
    every_env: dict[str, str] = field(default_factory=dict)
    api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # More API credentials the orchestrator accepts (one per line of its token secret).
    extra_api_tokens: list[str] = field(default_factory=list)
    chroma_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    gate_port: int = field(default_factory=free_port)
    chroma_direct_url: str = ""
    redis_passwords: dict[str, str] = field(
        default_factory=lambda: {u: secrets.token_urlsafe(16) for u in (*REDIS_USERS, "admin")}
    )
    _worker_seq: int = 0
    _api: httpx.Client | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api(self) -> httpx.Client:
        """An HTTP client of the API that sends the bearer token."""
        if self._api is None:
            self._api = httpx.Client(
                base_url=self.api_url, headers={"Authorization": f"Bearer {self.api_token}"}
            )
        return self._api

    @property
    def redis_url(self) -> str:
        """The harness's own Redis URL: the ``admin`` user, allowed everything."""
        return self.role_redis_url("admin", with_password=True)

    def role_redis_url(self, user: str, *, with_password: bool = False) -> str:
        auth = f"{user}:{self.redis_passwords[user]}" if with_password else user
        return f"redis://{auth}@127.0.0.1:{self.redis_port}/0"

    def env(self, redis_user: str = "orchestrator", **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENTMESH_", "ANTHROPIC_", "OTEL_", "SCRIPTED_LLM_"))
            and k not in {"REDIS_URL", "CHROMA_URL", "REDIS_PASSWORD"}
        }
        env.update(
            {
                "REDIS_URL": self.role_redis_url(redis_user),
                "REDIS_PASSWORD": self.redis_passwords[redis_user],
                "AGENTMESH_API_TOKEN": self.api_token,
                "CHROMA_TOKEN": self.chroma_token,
                "CHROMA_URL": self.chroma_url,
                "ANTHROPIC_API_KEY": "scripted-test-key",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.llm_port}",
                "AGENTMESH_API_PORT": str(self.api_port),
                "AGENTMESH_API_URL": self.api_url,
                "AGENTMESH_SECRETS_DIR": str(self.root / "no-secrets"),
                "AGENTMESH_ENVIRONMENT": "test",
                "AGENTMESH_LOG_LEVEL": "INFO",
                # The harness drives the API from one address far faster than one
                # client should (bench polls every 10 ms); the flood limits have
                # their own tests, which set small ones.
                "AGENTMESH_API_RATE_PER_S": "100000",
                "AGENTMESH_API_BURST": "100000",
                "AGENTMESH_API_CONCURRENCY": "10000",
                "AGENTMESH_SANDBOX_SOCKET_DIR": str(self.root / "sandbox-sockets"),
            }
        )
        if self.otlp_endpoint and self.traces_file:
            env.update(
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
                    "AGENTMESH_TRACES_FILE": str(self.traces_file),
                }
            )
        env.update(extra)
        env.update(self.every_env)
        return env

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    # -- services -------------------------------------------------------------------------
    def start_redis(self) -> None:
        data = self.root / "redis"
        data.mkdir(exist_ok=True)
        secrets_dir = self.root / "redis-secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        for user, password in self.redis_passwords.items():
            (secrets_dir / f"redis_{user}_password").write_text(password + "\n")
        acl = self.root / "users.acl"
        subprocess.run(["sh", str(ACL_SCRIPT), str(secrets_dir), str(acl)], check=True)
        with acl.open("a") as f:
            f.write(f"user admin on >{self.redis_passwords['admin']} ~* &* +@all\n")
        self.procs["redis"] = Proc(
            "redis",
            [
                redis_server_bin(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--aclfile",
                str(acl),
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            self.env(),
            self.root / "redis.log",
        ).start()
        wait_until(lambda: bool(self.redis().ping()), "redis-server to answer PING")

    def llm_admin(self, **config: int) -> dict[str, object]:
        """Change the scripted model at run time: delay_ms, fail_status, fail_count."""
        reply = httpx.post(f"http://127.0.0.1:{self.llm_port}/admin/config", json=config)
        reply.raise_for_status()
        result: dict[str, object] = reply.json()
        return result

    def llm_stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.llm_port}/admin/stats").json()
        return stats

    def restart_redis(self, down_s: float = 2.0) -> None:
        """SIGTERM redis-server (it flushes the AOF), keep it down a moment, start it again."""
        import time

        old = self.procs.pop("redis")
        assert old.stop() is not None
        time.sleep(down_s)
        self.start_redis()

    def start_llm(self) -> None:
        self.procs["llm"] = Proc(
            "llm",
            [
                str(BIN / "agentmesh-scripted-llm"),
                "--port",
                str(self.llm_port),
                "--delay-ms",
                str(self.llm_delay_ms),
                *(["--arrivals", str(self.llm_arrivals)] if self.llm_arrivals else []),
            ],
            self.env(),
            self.root / "llm.log",
        ).start()
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.llm_port}/healthz").is_success,
            "the scripted model to listen",
        )

    def start_gateway(
        self, name: str = "gateway", *, upstream: str = "", vendor_key: str = "scripted-test-key"
    ) -> str:
        """A model gateway process in front of ``upstream`` (default: the scripted model),
        knowing the callers of GATEWAY_TOKENS; returns its URL."""
        secrets = self.root / f"{name}-secrets"
        secrets.mkdir()
        for role, token in GATEWAY_TOKENS.items():
            (secrets / f"gateway_token_{role}").write_text(token + "\n")
        port = free_port()
        env = self.env(
            "gateway",
            AGENTMESH_SECRETS_DIR=str(secrets),
            AGENTMESH_GATEWAY_UPSTREAM=upstream or f"http://127.0.0.1:{self.llm_port}",
            AGENTMESH_GATEWAY_PORT=str(port),
            ANTHROPIC_API_KEY=vendor_key,
        )
        del env["ANTHROPIC_BASE_URL"]
        self.procs[name] = Proc(
            name,
            [sys.executable, "-m", "agentmesh_orchestrator.gateway"],
            env,
            self.root / f"{name}.log",
        ).start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/healthz").is_success, f"{name} to listen")
        return url

    def start_memory_gate(self, chroma_url: str) -> None:
        """The memory service before ``chroma_url``; the mesh's processes use its URL."""
        self.chroma_direct_url = chroma_url
        self.procs["memory-gate"] = Proc(
            "memory-gate",
            [sys.executable, "-m", "agentmesh_orchestrator.memory_gate"],
            self.env(
                AGENTMESH_MEMORY_GATE_UPSTREAM=chroma_url,
                AGENTMESH_MEMORY_GATE_PORT=str(self.gate_port),
            ),
            self.root / "memory-gate.log",
        ).start()
        self.chroma_url = f"http://127.0.0.1:{self.gate_port}"
        wait_until(
            lambda: httpx.get(f"{self.chroma_url}/healthz").is_success,
            "the memory gate to listen",
        )

    def start_orchestrator(self, **extra_env: str) -> Proc:
        proc = Proc(
            "orchestrator",
            [str(BIN / "orchestrator"), "serve"],
            self.env(
                AGENTMESH_WORKER_HOSTNAME="orchestrator",
                AGENTMESH_API_TOKEN="\n".join([self.api_token, *self.extra_api_tokens]),
                **{**self.orchestrator_env, **extra_env},
            ),
            self.root / "orchestrator.log",
        ).start()
        self.procs["orchestrator"] = proc
        wait_until(lambda: self.api.get("/readyz").is_success, "the orchestrator to be ready")
        return proc

    def start_planner(self, name: str, **extra_env: str) -> Proc:
        """A planning replica without the API (``orchestrator plan``)."""
        hb = self.root / f"{name}.heartbeat"
        proc = Proc(
            name,
            [str(BIN / "orchestrator"), "plan"],
            self.env(
                AGENTMESH_WORKER_HOSTNAME=name,
                AGENTMESH_HEARTBEAT_FILE=str(hb),
                AGENTMESH_HEARTBEAT_INTERVAL_S="1",
                **extra_env,
            ),
            self.root / f"{name}.log",
        ).start()
        self.procs[name] = proc
        wait_until(hb.exists, f"{name} to start planning", timeout=60)
        return proc

    def start_sandbox(self, name: str = "sandbox-1") -> Proc:
        """A replica of the sandbox service (the coder's runs go there)."""
        proc = Proc(
            name,
            [str(BIN / "sandbox-server")],
            self.env(
                AGENTMESH_SANDBOX_REPLICA=name,
                AGENTMESH_SANDBOX_SCRATCH_ROOT=str(self.root / "sandbox-runs" / name),
            ),
            self.root / f"{name}.log",
        ).start()
        self.procs[name] = proc
        check = [str(BIN / "sandbox-server"), "--check"]
        env = self.env(AGENTMESH_SANDBOX_REPLICA=name)
        wait_until(
            lambda: (
                subprocess.run(check, env=env, capture_output=True, check=False).returncode == 0
            ),
            f"{name} to answer",
        )
        return proc

    def start_worker(self, role: str, **extra_env: str) -> Proc:
        self._worker_seq += 1
        name = f"{role}-{self._worker_seq}"
        hb = self.root / f"{name}.heartbeat"
        proc = Proc(
            name,
            [str(BIN / f"{role}-worker")],
            self.env(
                role,
                AGENTMESH_HEARTBEAT_FILE=str(hb),
                AGENTMESH_HEARTBEAT_INTERVAL_S="1",
                AGENTMESH_SCRATCH_ROOT=str(self.root / "scratch" / name),
                AGENTMESH_WORKER_HOSTNAME=name,
                **extra_env,
            ),
            self.root / f"{name}.log",
        ).start()
        self.procs[name] = proc
        wait_until(hb.exists, f"{name} to send its first heartbeat", timeout=90)
        return proc

    def cli(
        self,
        *args: str,
        input_text: str | None = None,
        timeout: float = 180,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "orchestrator"), *args],
            env={**self.env(), **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(f"===== {n} =====\n{p.log_tail()}" for n, p in self.procs.items())

    def stop(self) -> None:
        for name in [n for n in self.procs if n not in {"redis", "llm"}] + ["llm", "redis"]:
            if name in self.procs:
                self.procs[name].stop()
        if self._api is not None:
            self._api.close()


@contextmanager
def local_mesh(
    root: Path,
    *,
    researchers: int = 1,
    coders: int = 1,
    llm_delay_ms: int = 0,
    llm_arrivals: Path | None = None,
    tracing: bool = True,
    orchestrator_env: dict[str, str] | None = None,
    extra_api_tokens: list[str] | None = None,
    every_env: dict[str, str] | None = None,
) -> Iterator[LocalMesh]:
    """The mesh as processes; with ``tracing``, every process exports to a real collector."""
    mesh = LocalMesh(
        root=root,
        llm_delay_ms=llm_delay_ms,
        llm_arrivals=llm_arrivals,
        orchestrator_env=dict(orchestrator_env or {}),
        extra_api_tokens=list(extra_api_tokens or []),
        every_env=dict(every_env or {}),
    )
    with ExitStack() as stack:
        stack.callback(mesh.stop)
        mesh.start_redis()
        if tracing:
            collector = stack.enter_context(start_collector(root / "collector"))
            mesh.otlp_endpoint, mesh.traces_file = collector.http_endpoint, collector.traces_file
        mesh.start_memory_gate(stack.enter_context(start_chroma(free_port(), root / "chroma")))
        mesh.start_llm()
        mesh.start_orchestrator()
        mesh.start_sandbox()
        for _ in range(researchers):
            mesh.start_worker("researcher")
        for _ in range(coders):
            mesh.start_worker("coder")
        yield mesh
