"""The one settings object every agentmesh process loads.

Every value comes from the environment or from a secret file (Docker secrets under
``/run/secrets``, or ``AGENTMESH_SECRETS_DIR``). A bad value fails at start-up with a
message naming the variable, never later in the middle of a task.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    Field,
    HttpUrl,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentmesh_shared.turns import TURNS


def secrets_dir() -> Path | None:
    """Where secret files are mounted (``AGENTMESH_SECRETS_DIR``, else /run/secrets)."""
    path = Path(os.environ.get("AGENTMESH_SECRETS_DIR", "/run/secrets"))
    return path if path.is_dir() else None


def _secrets_dir() -> str | None:
    path = secrets_dir()
    return str(path) if path is not None else None


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class SettingsError(RuntimeError):
    """The configuration is invalid; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTMESH_",
        env_ignore_empty=True,
        extra="ignore",
        secrets_dir=_secrets_dir(),
        case_sensitive=False,
        populate_by_name=True,
    )

    environment: Literal["development", "production", "test"] = "development"

    # --- infrastructure -------------------------------------------------------------
    redis_url: RedisDsn = Field(
        RedisDsn("redis://127.0.0.1:6379/0"), validation_alias=_env("REDIS_URL")
    )
    redis_password: SecretStr | None = Field(None, validation_alias=_env("REDIS_PASSWORD"))
    chroma_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8000"), validation_alias=_env("CHROMA_URL")
    )
    # Sent as a bearer token to the memory service's authenticating front.
    chroma_token: SecretStr | None = Field(None, validation_alias=_env("CHROMA_TOKEN"))
    memory_collection: str = Field("agentmesh-memory", min_length=3, max_length=63)
    # The memory service's authenticating front (agentmesh_orchestrator.memory_gate).
    memory_gate_upstream: HttpUrl = HttpUrl("http://127.0.0.1:8001")
    memory_gate_host: str = "127.0.0.1"
    memory_gate_port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    memory_gate_max_body_mb: PositiveInt = 32

    # --- the model ------------------------------------------------------------------
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env("ANTHROPIC_API_KEY"))
    anthropic_base_url: HttpUrl | None = Field(None, validation_alias=_env("ANTHROPIC_BASE_URL"))
    model: str = Field("claude-sonnet-5-5", min_length=1)
    llm_max_tokens: PositiveInt = 4096
    llm_timeout_s: PositiveFloat = 120.0
    llm_max_retries: Annotated[int, Field(ge=0, le=10)] = 4
    # This service's credential for the model gateway (secret file
    # ``agentmesh_gateway_token``): with it, ANTHROPIC_BASE_URL is the gateway and the
    # vendor key stays there.
    gateway_token: SecretStr | None = None
    # The gateway's own settings: where it forwards the Messages API, where it listens.
    gateway_upstream: HttpUrl = HttpUrl("https://api.anthropic.com")
    gateway_host: str = "127.0.0.1"
    gateway_port: Annotated[int, Field(gt=0, lt=65536)] = 8070

    # --- egress ---------------------------------------------------------------------
    # The egress proxy (http://host:port) and this service's user and password there
    # (secret file ``agentmesh_egress_password``); unset means a direct connection.
    egress_proxy: HttpUrl | None = None
    egress_user: str = ""
    egress_password: SecretStr | None = None

    # --- API and CLI ----------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(gt=0, lt=65536)] = 8080
    api_url: HttpUrl = HttpUrl("http://127.0.0.1:8080")
    # Flower's basic auth, user:password (secret flower_basic_auth).
    flower_basic_auth: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AGENTMESH_FLOWER_BASIC_AUTH", "flower_basic_auth")
    )
    # The bearer token every API call but /healthz and /readyz must carry (secret api_token).
    api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AGENTMESH_API_TOKEN", "api_token")
    )
    max_task_chars: PositiveInt = 8000
    # Where the collector keeps traces (OTLP/JSON lines), read by `orchestrator trace`.
    traces_file: Path = Path("/var/lib/otel/traces.jsonl")
    # Planning steps one replica runs at once (each is mostly a model call). Tasks
    # waiting on subtasks hold no step: they are bounded by max_active_tasks only.
    # 0 on `orchestrator serve` makes an API-only replica.
    planner_concurrency: Annotated[int, Field(ge=0)] = 64
    # Unfinished tasks the mesh admits; past it, POST /tasks answers 429.
    max_active_tasks: PositiveInt = 5000
    admission_retry_after_s: PositiveInt = 5
    # A planner replica's lease on the task it steps; a dead replica's task is taken
    # over once the lease lapses.
    plan_lease_s: Annotated[float, Field(ge=3)] = 15.0
    # How often a task waiting on subtasks is looked at without a worker's report
    # (to resend a subtask whose worker died, or fail one past its deadline).
    plan_recheck_s: PositiveFloat = 10.0

    # --- flood limits (per credential: see agentmesh_orchestrator.limits) ------------
    api_rate_per_s: PositiveFloat = 20.0  # sustained requests a second
    api_burst: PositiveInt = 40  # requests allowed at once above the sustained rate
    api_concurrency: PositiveInt = 16  # requests in flight at once, long-polls included
    max_stored_tasks: PositiveInt = 10_000  # past this, the oldest finished are expired
    # Fraction of Redis's maxmemory above which new tasks are refused and /readyz degrades.
    redis_memory_high_water: Annotated[float, Field(gt=0, lt=1)] = 0.8

    # --- per-task limits (defaults; overridable per task) ---------------------------
    max_steps: PositiveInt = 12
    token_budget: PositiveInt = 200_000
    task_timeout_s: PositiveFloat = 900.0
    subtask_timeout_s: PositiveFloat = 300.0

    # --- workers --------------------------------------------------------------------
    worker_concurrency: PositiveInt = 64
    worker_hostname: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    visibility_timeout_s: PositiveInt = 3600
    heartbeat_file: Path = Path("/tmp/agentmesh-heartbeat")  # noqa: S108 - tmpfs in containers
    heartbeat_interval_s: PositiveFloat = 5.0
    # A loop with no model call or tool call starting or ending for this long is stalled.
    stall_timeout_s: PositiveFloat = 300.0
    # How long one thread may hold the GIL while others wait (CPython's default is 5
    # ms). Every service runs many I/O-bound threads (agent loops, planning steps,
    # request handlers) that hold the GIL for moments between round trips; with 5 ms,
    # a thread whose reply has arrived queues behind any CPU-bound one for up to that
    # long at each round trip. docs/measurements.md has the A/B that chose 0.5 ms.
    gil_switch_interval_ms: Annotated[float, Field(gt=0, le=100)] = 0.5
    # Threads of a process that run their CPU work at once (planning steps, agent
    # loops); they give their turn up while they wait on the network. 0: no limit.
    # See agentmesh_shared.turns.
    cpu_turns: Annotated[int, Field(ge=0, le=1024)] = 2

    # --- researcher -----------------------------------------------------------------
    fetch_allowlist: str = ""  # comma-separated host globs; empty means no fetching
    fetch_max_bytes: PositiveInt = 512_000
    fetch_timeout_s: PositiveFloat = 15.0  # the whole fetch, every redirect hop included
    fetch_max_redirects: Annotated[int, Field(ge=0, le=20)] = 5

    # --- MCP tool servers (agentmesh_shared.mcp) --------------------------------------
    # The servers a user added and the roles they are granted to; missing: none.
    mcp_config: Path = Path("/etc/agentmesh/mcp.yaml")
    # An MCP tool result longer than this is cut, with a note to the model.
    mcp_result_max_chars: PositiveInt = 20_000
    # Connecting (and listing tools) and one tool call, each at most this long.
    mcp_connect_timeout_s: PositiveFloat = 10.0
    mcp_call_timeout_s: PositiveFloat = 60.0

    # --- coder sandbox --------------------------------------------------------------
    scratch_root: Path = Path("/tmp/agentmesh-scratch")  # noqa: S108 - tmpfs in containers
    sandbox_cpu_s: PositiveInt = 10
    sandbox_memory_mb: PositiveInt = 256
    sandbox_max_procs: PositiveInt = 32
    sandbox_file_mb: PositiveInt = 8
    sandbox_output_bytes: PositiveInt = 64_000
    sandbox_wall_s: PositiveFloat = 30.0
    # The sandbox service: its replicas' sockets (a volume shared with the coder only),
    # where its runs' directories go, and how many runs one replica holds at once.
    sandbox_socket_dir: Path = Path("/run/agentmesh-sandbox")
    sandbox_scratch_root: Path = Path("/tmp/agentmesh-runs")  # noqa: S108 - tmpfs in containers
    sandbox_concurrency: PositiveInt = 4
    sandbox_replica: str = ""  # this replica's socket name; empty: the host name

    @field_validator(
        "anthropic_api_key",
        "redis_password",
        "gateway_token",
        "egress_password",
        "api_token",
        "chroma_token",
        "flower_basic_auth",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """An empty secret file (``make up`` creates one as a placeholder) means "not set"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.visibility_timeout_s <= self.subtask_timeout_s:
            msg = (
                "AGENTMESH_VISIBILITY_TIMEOUT_S must be longer than AGENTMESH_SUBTASK_TIMEOUT_S "
                f"({self.visibility_timeout_s} <= {self.subtask_timeout_s}): a redelivered "
                "subtask would run twice while the first run is still alive"
            )
            raise ValueError(msg)
        key = self.anthropic_api_key
        if (
            self.environment == "production"
            and key
            and key.get_secret_value()
            in {
                "changeme",
                "sk-ant-xxx",
            }
        ):
            msg = "ANTHROPIC_API_KEY is a placeholder; set a real key or leave it empty"
            raise ValueError(msg)
        return self

    @property
    def llm_configured(self) -> bool:
        """A key of our own, or a gateway credential (the gateway then holds the key)."""
        return self.anthropic_api_key is not None or self.gateway_token is not None

    def egress_proxy_url(self) -> str | None:
        """The egress proxy's URL with this service's user and password, if configured."""
        proxy = self.egress_proxy
        if proxy is None:
            return None
        auth = ""
        if self.egress_user and self.egress_password is not None:
            password = quote(self.egress_password.get_secret_value(), safe="")
            auth = f"{quote(self.egress_user, safe='')}:{password}@"
        return f"{proxy.scheme}://{auth}{proxy.host}:{proxy.port or 3128}"

    def redis_connection_url(self) -> str:
        """The Redis URL with the password from the secret, if the URL carries none."""
        url = self.redis_url
        if self.redis_password is None or url.password:
            return str(url)
        host = url.host or "127.0.0.1"
        port = url.port or 6379
        path = url.path or "/0"
        user = url.username or ""
        password = self.redis_password.get_secret_value()
        return f"{url.scheme}://{quote(user)}:{quote(password, safe='')}@{host}:{port}{path}"


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = item.get("loc") or ("settings",)
        name = str(loc[0])
        var = name.upper() if name.upper() in _UNPREFIXED else f"AGENTMESH_{name.upper()}"
        value = item.get("input")
        shown = "" if name.endswith(("password", "key", "_token", "_auth")) else f" (got {value!r})"
        lines.append(f"{var}: {item['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


_UNPREFIXED = {
    "REDIS_URL",
    "REDIS_PASSWORD",
    "CHROMA_URL",
    "CHROMA_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
}


def load_settings(**overrides: object) -> Settings:
    """Load and validate the settings, raising :class:`SettingsError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


def settings_or_exit(program: str) -> Settings:
    """:func:`load_settings` for an entry point: a bad setting ends the program with
    exit status 2 and one line on stderr naming the variable, not a traceback. It
    also sets the interpreter's GIL switch interval (``gil_switch_interval_ms``) and
    the process's CPU turns (``cpu_turns``)."""
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"{program}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    # The process's own tuning, set once by its entry point.
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    TURNS.configure(settings.cpu_turns)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
