"""Fill one folder of a host-side wheelhouse for one target interpreter.

Image builds must not need an index: build containers may have no route to PyPI
(or no trust in a proxy's certificate), so the host downloads every wheel an
image installs and the Dockerfiles install with `--no-index`.

Input is a hashed requirements file with environment markers (`uv export`, or a
`uv pip compile --universal --generate-hashes` lock). The markers are evaluated
for the *target* interpreter, described by the JSON that docker/target-env.py
prints inside the image (Debian's Python 3.11.2 needs `async-timeout`, the
host's 3.11.7 does not). Requirements already provided by a lower layer
(`--exclude`) are left out, so each layer of an image gets only its own wheels.

Wheels built on the host from the workspace (`--local-wheel`) are added with
their sha256. The folder receives `requirements.txt` (pins with hashes, no
markers: what the Dockerfile installs with `--require-hashes`) and exactly the
wheels it names. Third-party wheels are downloaded again only when their pins or
the target change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # the host has pip, which vendors packaging
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

OLDEST_MANYLINUX_MINOR = 17


class Pin:
    """One `name==version` requirement with the hashes of its files."""

    def __init__(self, line: str) -> None:
        spec, *hash_options = line.split(" --hash=")
        self.requirement = Requirement(spec.strip())
        specifiers = list(self.requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise SystemExit(f"not an exact pin: {spec.strip()}")
        self.name = canonicalize_name(self.requirement.name)
        self.version = specifiers[0].version
        self.hashes = sorted(option.strip() for option in hash_options)

    def applies_to(self, markers: dict[str, str]) -> bool:
        marker: Marker | None = self.requirement.marker
        return marker is None or marker.evaluate(markers)

    def render(self) -> str:
        hashes = " ".join(f"--hash={digest}" for digest in self.hashes)
        return f"{self.name}=={self.version} {hashes}"


def read_pins(path: Path, markers: dict[str, str]) -> dict[str, Pin]:
    """Pins of a requirements file that apply to the target, by canonical name."""
    logical_lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical_lines.append(" ".join(pending.split()))
        pending = ""
    pins: dict[str, Pin] = {}
    for line in logical_lines:
        if line.startswith("-"):
            raise SystemExit(f"{path}: unsupported option line: {line}")
        pin = Pin(line)
        if pin.applies_to(markers):
            if not pin.hashes:
                raise SystemExit(f"{path}: no hashes for {pin.name}")
            if pin.name in pins and pins[pin.name].version != pin.version:
                raise SystemExit(f"{path}: two versions of {pin.name} apply to the target")
            pins[pin.name] = pin
    return pins


def pip_target_options(target: dict[str, object]) -> list[str]:
    """`pip download` options that select wheels for the target interpreter."""
    python_tag = str(target["python_tag"])
    glibc_major, glibc_minor = target["glibc"]  # type: ignore[misc]
    machine = str(target["machine"])
    if glibc_major != 2:
        raise SystemExit(f"unexpected glibc {glibc_major}.{glibc_minor}")
    platforms = [
        f"manylinux_2_{minor}_{machine}"
        for minor in range(int(glibc_minor), OLDEST_MANYLINUX_MINOR - 1, -1)
    ]
    platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    options = [
        "--implementation=cp",
        f"--python-version={python_tag[2:3]}.{python_tag[3:]}",
        f"--abi={python_tag}",
    ]
    options += [f"--platform={platform}" for platform in platforms]
    return options


def local_pin(wheel: Path) -> tuple[str, str]:
    """The requirement line and canonical name of a wheel built on the host."""
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{canonicalize_name(name)}=={version} --hash=sha256:{digest}", canonicalize_name(name)


def fill_third_party(dest: Path, requirements: str, options: list[str], count: int) -> None:
    """Download the third-party wheels into dest unless its stamp says they are there."""
    stamp = hashlib.sha256((requirements + "\n".join(options)).encode()).hexdigest()
    stamp_file = dest / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        return
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "third-party.txt").write_text(requirements)
    if count:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "--dest",
                str(staging),
                "--requirement",
                str(staging / "third-party.txt"),
                *options,
            ],
            check=True,
        )
    found = len(list(staging.glob("*.whl")))
    if found != count:
        raise SystemExit(f"expected {count} wheels in {staging}, found {found}")
    (staging / ".stamp").write_text(stamp + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    print(f"wheelhouse: downloaded {count} wheels into {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="JSON from target-env.py")
    parser.add_argument("--requirements", type=Path, required=True, help="hashed, with markers")
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="requirements provided by a lower layer (repeatable)",
    )
    parser.add_argument(
        "--local-wheel",
        type=Path,
        action="append",
        default=[],
        help="a wheel built on the host (the project's own packages) to add (repeatable)",
    )
    parser.add_argument("--dest", type=Path, required=True, help="folder to fill")
    args = parser.parse_args()

    target = json.loads(args.target.read_text())
    markers = target["markers"]
    pins = read_pins(args.requirements, markers)
    for lower in args.exclude:
        for name, pin in read_pins(lower, markers).items():
            if name in pins:
                if pins[name].version != pin.version:
                    raise SystemExit(f"{name}: {pins[name].version} here, {pin.version} below")
                del pins[name]
    third_party = "".join(pins[name].render() + "\n" for name in sorted(pins))
    fill_third_party(args.dest, third_party, pip_target_options(target), len(pins))

    # The project's own wheels change with every edit: they are refreshed on each
    # run without touching the downloaded ones.
    local_list = args.dest / "local.txt"
    if local_list.is_file():
        for stale in local_list.read_text().split():
            (args.dest / stale).unlink(missing_ok=True)
    local_lines = []
    for wheel in args.local_wheel:
        line, name = local_pin(wheel)
        if name in pins:
            raise SystemExit(f"{name} is both a local wheel and a third-party requirement")
        shutil.copyfile(wheel, args.dest / wheel.name)
        local_lines.append(line)
    local_list.write_text("".join(f"{wheel.name}\n" for wheel in args.local_wheel))
    (args.dest / "requirements.txt").write_text(
        third_party + "".join(f"{line}\n" for line in sorted(local_lines))
    )
    print(f"wheelhouse: {args.dest}: {len(pins)} third-party and {len(local_lines)} local wheels")


if __name__ == "__main__":
    main()
