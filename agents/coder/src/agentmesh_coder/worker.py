"""The coder: a Celery consumer of the ``code`` queue.

Its loop searches shared memory (so what research found informs the code), writes,
reads and lists files in a scratch directory of its own subtask, and runs Python in
the ``sandbox`` service (never in this container): each run gets the subtask's
files, and the files it leaves come back here. It returns the files and the real
output of every run.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agentmesh_shared.agent import Tool, ToolContext, ToolError
from agentmesh_shared.agent.memory_tools import memory_search_tool
from agentmesh_shared.models import Role, SubtaskMessage
from agentmesh_shared.worker import WorkerRuntime, run_worker
from pydantic import BaseModel, Field

from agentmesh_coder.sandbox import RunResult, Sandbox, SandboxUnavailableError

SYSTEM_PROMPT = """You are a coder agent in a multi-agent mesh.
Search shared memory for what researchers found, write the Python program the
instruction asks for with write_file, run it with run_python, fix it until it works,
and answer with the program and its real output."""

MAX_FILE_CHARS = 200_000
MAX_FILES = 50


class WriteFileInput(BaseModel):
    path: str = Field(min_length=1, max_length=200, description="relative path, e.g. main.py")
    content: str = Field(max_length=MAX_FILE_CHARS)


class ReadFileInput(BaseModel):
    path: str = Field(min_length=1, max_length=200)


class ListFilesInput(BaseModel):
    pass


class RunPythonInput(BaseModel):
    path: str = Field(min_length=1, max_length=200, description="the script to run")
    args: list[str] = Field(default_factory=list, max_length=20)
    stdin: str = Field("", max_length=100_000)


@dataclass
class CodeSession:
    workdir: Path
    sandbox: Sandbox
    tools: Sequence[Tool[Any]] = ()
    runs: list[dict[str, Any]] = field(default_factory=list)

    def resolve(self, path: str) -> Path:
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ToolError(f"{path!r} must be a relative path inside the scratch directory")
        return self.workdir.joinpath(*rel.parts)

    def files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for file in sorted(self.workdir.rglob("*")):
            if file.is_file() and len(out) < MAX_FILES:
                rel = file.relative_to(self.workdir).as_posix()
                out[rel] = file.read_text(errors="replace")[:MAX_FILE_CHARS]
        return out

    def store_files(self, files: dict[str, str]) -> None:
        """Keep what a run left in its directory (new and changed files)."""
        for path, content in files.items():
            try:
                target = self.resolve(path)
            except ToolError:
                continue
            if target.is_symlink() or (target.exists() and not target.is_file()):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def artifacts(self) -> dict[str, Any]:
        return {"files": self.files(), "runs": self.runs}

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- tools ------------------------------------------------------------------------
    def write_file(self, args: WriteFileInput, ctx: ToolContext) -> str:
        target = self.resolve(args.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(args.content)
        return f"wrote {args.path} ({len(args.content)} characters)"

    def read_file(self, args: ReadFileInput, ctx: ToolContext) -> str:
        target = self.resolve(args.path)
        if not target.is_file():
            raise ToolError(f"{args.path} does not exist")
        return target.read_text(errors="replace")[:MAX_FILE_CHARS]

    def list_files(self, args: ListFilesInput, ctx: ToolContext) -> str:
        names = sorted(self.files())
        return "\n".join(names) if names else "(no files yet)"

    def run_python(self, args: RunPythonInput, ctx: ToolContext) -> str:
        if not self.resolve(args.path).is_file():
            raise ToolError(f"{args.path} does not exist; write it first")
        try:
            result: RunResult = self.sandbox.run_python(
                args.path, args.args, args.stdin, files=self.files()
            )
        except SandboxUnavailableError as err:
            raise ToolError(str(err)) from None
        self.store_files(result.files)
        self.runs.append(
            {
                "path": args.path,
                "args": args.args,
                "exit_code": result.exit_code,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "duration_s": round(result.duration_s, 3),
                "timed_out": result.timed_out,
                "truncated": result.truncated,
            }
        )
        return result.describe()


@dataclass
class Coder:
    role: Role = Role.CODER
    system_prompt: str = SYSTEM_PROMPT

    def open_session(self, msg: SubtaskMessage, runtime: WorkerRuntime) -> CodeSession:
        workdir = runtime.settings.scratch_root / msg.subtask_id
        # A redelivered subtask starts again from a clean directory of its own.
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, mode=0o700)
        session = CodeSession(workdir=workdir, sandbox=Sandbox(runtime.settings))
        session.tools = [
            memory_search_tool(runtime.memory),
            Tool(
                "write_file",
                "Write a text file in the scratch directory.",
                WriteFileInput,
                session.write_file,
            ),
            Tool(
                "read_file",
                "Read a file from the scratch directory.",
                ReadFileInput,
                session.read_file,
            ),
            Tool(
                "list_files",
                "List the files in the scratch directory.",
                ListFilesInput,
                session.list_files,
            ),
            Tool(
                "run_python",
                "Run a Python script from the scratch directory in the sandbox (no network; "
                "limited CPU, memory, processes, file size, output and wall time). Returns "
                "its exit code and output; files it writes are kept.",
                RunPythonInput,
                session.run_python,
            ),
        ]
        return session


def main() -> None:
    run_worker(Coder())


if __name__ == "__main__":
    main()
