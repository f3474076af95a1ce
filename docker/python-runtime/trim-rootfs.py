"""Write the service images' runtime root filesystem, as a tar on stdout.

Run inside the offline base image (agentmesh/python-base), which it reads as its own
root, by docker/build-images.sh:

    docker run --rm -i --network none BASE python3 - < docker/python-runtime/trim-rootfs.py > runtime.tar

The runtime keeps the Debian packages the Python services need when they run, and
the packages those depend on: the interpreter and its standard library with every
library its extension modules link (OpenSSL, SQLite, libffi, ncurses, ...), libgcc
and libstdc++ (which manylinux wheels may link), zlib, ca-certificates' bundle,
netbase, tzdata and media-types. Left out: everything that installs or builds
(apt, dpkg and its database, debconf, gpgv, perl-base, the pip and setuptools wheels,
the venv module's ensurepip), the shells and the command-line tools (bash, dash,
coreutils, util-linux, findutils, ...), login and passwd with PAM, and glibc's iconv
modules (CPython's codecs do not use them). A service image is built in the full
base and copies its venv, users and files onto this one, so nothing here has to
install anything. /var/lib/dpkg/status lists exactly the packages kept, so image
scanners still see what is in it. A summary goes to stderr.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
from pathlib import Path

# The packages kept, with everything they depend on.
ROOTS = (
    "python3",
    "libpython3.11-stdlib",
    "ca-certificates",
    "netbase",
    "tzdata",
    "media-types",
    "base-files",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
)
# Dependencies not followed: needed to install or configure a package, not to run it
# (ca-certificates' bundle is generated already; base-files wants an awk for its
# maintainer scripts; python3-minimal wants dpkg for py3compile, already run).
NOT_FOLLOWED = {
    "dpkg",
    "debconf",
    "debconf-2.0",
    "openssl",
    "awk",
    "mawk",
    "install-info",
    "debianutils",
}
# Paths dropped even though a kept package owns them (the longest match of DROP and
# KEEP decides).
DROP = (
    "/usr/lib/x86_64-linux-gnu/gconv",
    "/usr/lib/ssl/misc",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/cache/apt",
    "/var/cache/debconf",
    "/var/cache/ldconfig",
    "/var/log",
    "/etc/apt",
)
# Paths kept even though only a package left out owns them: the C.UTF-8 locale (LANG,
# from libc-bin) and OpenSSL's configuration (from openssl), whose /usr/lib/ssl/certs
# and cert.pem are where libssl (and Python's ssl) find ca-certificates' bundle.
KEEP = ("/usr/lib/locale/C.utf8", "/usr/lib/ssl", "/etc/ssl/openssl.cnf", "/etc/ssl/private")
# Mounted by the engine in every container: only their mount points go in the image.
MOUNTS = ("/proc", "/sys", "/dev")
ENGINE_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/.dockerenv")

DPKG = Path("/var/lib/dpkg")


def log(message: str) -> None:
    print(f"trim-rootfs: {message}", file=sys.stderr)


def parse_status() -> dict[str, dict[str, str]]:
    packages: dict[str, dict[str, str]] = {}
    for stanza in DPKG.joinpath("status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status") == "install ok installed":
            fields["_stanza"] = stanza.strip("\n")
            packages[fields["Package"]] = fields
    return packages


def depends(fields: dict[str, str]) -> list[list[str]]:
    groups = []
    for key in ("Pre-Depends", "Depends"):
        for group in filter(None, (g.strip() for g in fields.get(key, "").split(","))):
            groups.append(
                [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            )
    return groups


def closure(packages: dict[str, dict[str, str]]) -> set[str]:
    provides: dict[str, str] = {}
    for name, fields in packages.items():
        for provided in filter(None, (p.strip() for p in fields.get("Provides", "").split(","))):
            provides.setdefault(re.split(r"[\s(:]", provided, maxsplit=1)[0], name)
    kept: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        if name not in packages:
            sys.exit(f"trim-rootfs: {name} is not installed in the base")
        kept.add(name)
        for group in depends(packages[name]):
            if any(alt in NOT_FOLLOWED for alt in group):
                continue
            choices = [provides.get(alt, alt) for alt in group]
            installed = [alt for alt in choices if alt in packages]
            if not installed:
                sys.exit(f"trim-rootfs: {name} depends on {' | '.join(group)}, none installed")
            todo.append(next((alt for alt in installed if alt in kept), installed[0]))
    return kept


def canonical(path: str) -> str:
    """The path under merged /usr (dpkg still lists /bin/..., /lib/...)."""
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail)


def owned(name: str) -> set[str]:
    for candidate in (f"{name}.list", f"{name}:amd64.list"):
        path = DPKG / "info" / candidate
        if path.exists():
            return {
                canonical(line) for line in path.read_text().splitlines() if line not in ("", "/.")
            }
    sys.exit(f"trim-rootfs: no file list for {name}")


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def ruled(path: str) -> bool | None:
    """True if KEEP keeps the path (or leads to one kept), False if DROP drops it."""
    if any(k.startswith(path + "/") for k in KEEP):
        return True
    matches = [(len(p), p in KEEP) for p in (*KEEP, *DROP) if under(path, (p,))]
    return max(matches)[1] if matches else None


def main() -> None:
    packages = parse_status()
    kept = closure(packages)
    left_out = sorted(set(packages) - kept)
    kept_files = set().union(*(owned(name) for name in kept))
    removed = set().union(*(owned(name) for name in left_out)) - kept_files
    # The bytecode Debian compiled for a left-out package's modules goes with them.
    for path in [p for p in removed if p.endswith(".py")]:
        folder, name = os.path.split(path)
        cache = os.path.join(folder, "__pycache__")
        if os.path.isdir(cache):
            stem = name[:-3] + "."
            removed.update(os.path.join(cache, f) for f in os.listdir(cache) if f.startswith(stem))

    def wanted(path: str) -> bool:
        rule = ruled(path)
        if rule is not None:
            return rule
        if path in removed or path in ENGINE_FILES:
            return False
        if os.path.islink(path):
            # A link to a file left out (an alternative such as awk -> mawk) goes too.
            target = os.path.realpath(path)
            return not (target in removed or ruled(target) is False)
        return True

    entries: list[str] = []
    for folder, dirs, files in os.walk("/"):
        if folder in MOUNTS:
            dirs[:] = []
            entries.append(folder)
            continue
        if folder != "/" and not wanted(folder):
            dirs[:] = []
            continue
        dirs.sort()
        entries.extend(p for p in (os.path.join(folder, f) for f in sorted(files)) if wanted(p))
        # Links to directories are listed in dirs but not walked.
        entries.extend(
            p for p in (os.path.join(folder, d) for d in dirs) if os.path.islink(p) and wanted(p)
        )
        entries.append(folder)
    # A directory only left-out packages owned, now empty, goes too.
    parents = {os.path.dirname(p) for p in entries}
    while True:
        more = {os.path.dirname(p) for p in parents} - parents
        if not more:
            break
        parents |= more
    entries = [
        p
        for p in entries
        if not (os.path.isdir(p) and not os.path.islink(p) and p in removed and p not in parents)
    ]

    status = "\n\n".join(packages[name]["_stanza"] for name in sorted(kept)) + "\n"
    size = 0
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(entries):
            info = tar.gettarinfo(path, arcname=path.lstrip("/") or ".")
            if info.isreg():
                size += info.size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        for folder in ("var/lib/dpkg", "var/log"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(os.path.getmtime("/"))
            tar.addfile(info)
        info = tarfile.TarInfo("var/lib/dpkg/status")
        data = status.encode()
        info.size, info.mode, info.mtime = (
            len(data),
            0o644,
            int(DPKG.joinpath("status").stat().st_mtime),
        )
        tar.addfile(info, io.BytesIO(data))
    log(f"kept {len(kept)} packages, {size / 1e6:.1f} MB of files: {' '.join(sorted(kept))}")
    log(f"left out {len(left_out)}: {' '.join(left_out)}")


if __name__ == "__main__":
    main()
