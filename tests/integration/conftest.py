from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mesh import LocalMesh, local_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    root = Path(tmp_path_factory.mktemp("mesh"))
    with local_mesh(root) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and "mesh" in getattr(item, "funcargs", {}):
        report.sections.append(("mesh process logs", item.funcargs["mesh"].logs()))
    return report
