"""Image sizes: each service image, uncompressed, as the engine stores it.

Reads the image names from build/images.env (written by docker/build-images.sh) and
asks the engine for each image's size, and lists what takes the most room in the
researcher's venv. The figure is set
against the 200 MB goal per agent image.

    uv run python -m tests.bench.images
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.bench.plots import plot_bars

ROOT = Path(__file__).resolve().parents[2]
GOAL_MB = 200
SERVICES = ("orchestrator", "researcher", "coder")


def _images_env() -> dict[str, str]:
    path = ROOT / "build" / "images.env"
    if not path.exists():
        raise SystemExit("build/images.env is missing: run `make images` first")
    lines = [line for line in path.read_text().splitlines() if "=" in line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


def _size_mb(image: str) -> float:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip()) / 1e6


# Run by the image's own Python: the offline runtime image has no shell and no du.
_SIZES = """
import os, sys, sysconfig
site = sysconfig.get_path("purelib")
for name in os.listdir(site):
    path, size = os.path.join(site, name), 0
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, _, files in os.walk(path):
            size += sum(os.lstat(os.path.join(folder, f)).st_size for f in files)
    else:
        size = os.lstat(path).st_size
    print(size, name)
"""


def _largest_installed(image: str, top: int = 8) -> dict[str, float]:
    """The largest entries of the image's venv site-packages, in MB of file content."""
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "python", "-c", _SIZES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sizes = {}
    for line in out.splitlines():
        size, name = line.split(maxsplit=1)
        sizes[name] = round(int(size) / 1e6, 1)
    return dict(sorted(sizes.items(), key=lambda item: -item[1])[:top])


def bench_images() -> dict[str, Any]:
    env = _images_env()
    sizes = {service: _size_mb(env[f"{service.upper()}_IMAGE"]) for service in SERVICES}
    # The image the services run on (offline: the trimmed runtime, not the build base).
    base = _size_mb(env.get("RUNTIME_IMAGE", env["PYTHON_IMAGE"]))
    plot_bars(
        "images",
        f"Service images, uncompressed ({env['AGENTMESH_IMAGE_SOURCE']} path)",
        {"runtime base": base, **sizes},
        ylabel="MB",
        limit=GOAL_MB,
        limit_label=f"goal: {GOAL_MB} MB per agent image",
    )
    return {
        "source": env["AGENTMESH_IMAGE_SOURCE"],
        "runtime_base_mb": round(base, 1),
        **{f"{service}_mb": round(size, 1) for service, size in sizes.items()},
        "goal_mb": GOAL_MB,
        "largest_in_the_researcher_venv_mb": _largest_installed(env["RESEARCHER_IMAGE"]),
    }


def main() -> None:
    print(json.dumps(bench_images(), indent=2))


if __name__ == "__main__":
    main()
