"""Describe the Python interpreter of an image, for choosing its wheels on the host.

Runs inside the target image with nothing but the standard library and prints one
JSON object: the PEP 508 marker environment (so dependency markers are evaluated
for this interpreter, not the host's) plus the wheel tag facts pip needs
(implementation, ABI, glibc version, architecture).
"""

import json
import os
import platform
import sys


def _implementation_version() -> str:
    info = sys.implementation.version
    version = f"{info.major}.{info.minor}.{info.micro}"
    if info.releaselevel != "final":
        version += info.releaselevel[0] + str(info.serial)
    return version


def main() -> None:
    libc_name, _, libc_version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    if libc_name != "glibc":
        sys.exit("only glibc-based images are supported")
    major, minor = (int(part) for part in libc_version.split(".")[:2])
    markers = {
        "implementation_name": sys.implementation.name,
        "implementation_version": _implementation_version(),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }
    print(
        json.dumps(
            {
                "markers": markers,
                "python_tag": f"cp{sys.version_info.major}{sys.version_info.minor}",
                "glibc": [major, minor],
                "machine": platform.machine(),
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
