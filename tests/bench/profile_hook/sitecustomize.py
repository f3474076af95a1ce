"""Loaded by every Python process of a mesh that ``tests.bench.profile`` starts (this
folder is put first on their ``PYTHONPATH``): a thread that waits for the file
``start`` in ``AGENTMESH_BENCH_PROFILE_DIR``, profiles every thread's CPU time with
yappi until the file ``stop`` appears, and saves the profile as ``<pid>.pstat``.

A process without yappi (Chroma's own environment) or without the variable runs as
it would have. Profiling costs several times the CPU it measures: the profile says
where the CPU goes, in shares, not how much there is.
"""

from __future__ import annotations

import os
import threading
import time


def _profile(out: str) -> None:
    import yappi

    while not os.path.exists(os.path.join(out, "start")):
        time.sleep(0.2)
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)
    while not os.path.exists(os.path.join(out, "stop")):
        time.sleep(0.2)
    yappi.stop()
    path = os.path.join(out, f"{os.getpid()}.pstat")
    yappi.get_func_stats().save(path + ".part", type="pstat")
    os.replace(path + ".part", path)


def _install() -> None:
    out = os.environ.get("AGENTMESH_BENCH_PROFILE_DIR")
    if not out:
        return
    try:
        import yappi  # noqa: F401
    except ImportError:
        return
    # The driver waits for a profile from every process that announced itself.
    with open(os.path.join(out, f"{os.getpid()}.armed"), "w"):
        pass
    threading.Thread(target=_profile, args=(out,), daemon=True, name="bench-profile").start()


_install()
