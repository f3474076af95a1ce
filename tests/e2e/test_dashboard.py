"""The dashboard in Debian's Chromium against the compose mesh, through the published
API port (the egress container's ingress): sign in, submit from the page and watch
the task succeed, open its waterfall, cancel a slow task, see the workers; a result
carrying script stays text. Screenshots of each page go to build/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from tests.e2e.conftest import ROOT, ComposeMesh
from tests.e2e.test_faults_and_traces import set_llm
from tests.support.browser import Dashboard, chromium

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def page(compose_mesh: ComposeMesh) -> Iterator[Dashboard]:
    token = (ROOT / "secrets" / "api_token").read_text().split()[0]
    with chromium() as driver:
        yield Dashboard(driver, f"http://127.0.0.1:{compose_mesh.api_port}", token)


def _signed_in(page: Dashboard) -> None:
    page.open()
    page.driver.execute_script("sessionStorage.clear()")
    page.sign_in()
    page.wait(lambda d: page.all("#task-rows"), "the task list")


def test_sign_in_and_watch_a_task_from_the_page_to_its_waterfall(page: Dashboard) -> None:
    page.open()
    page.driver.execute_script("sessionStorage.clear()")
    page.open()
    page.wait(lambda d: page.all("#token"), "the sign-in form")
    page.shot("sign-in")
    page.sign_in()
    page.wait(lambda d: page.all("#task-rows"), "the task list")

    task_id = page.submit(
        "Find the primes below 50 and sum them", budget=100000, steps=8, timeout=300
    )
    assert page.wait_status("succeeded", "failed", timeout=240) == "succeeded"
    page.wait(lambda d: "Synthesis for" in page.text("#answer"), "the rendered answer")
    assert page.attrs("#subtask-rows tr[data-subtask-id]", "data-status") == ["succeeded"] * 2
    replicas = page.texts("#subtask-rows tr[data-subtask-id] td:nth-child(3)")
    assert all(len(r) > 3 for r in replicas), replicas  # each names its container
    assert {"task.step", "subtask.started", "task.succeeded"} <= set(
        page.attrs("#events li", "data-kind")
    )
    page.shot("task")

    page.find("#open-trace").click()
    page.wait(lambda d: page.all("#waterfall .span-row[data-span-id]"), "the waterfall", timeout=60)

    # The collector batches: reload until every service the task touched has spans.
    def whole(_: webdriver.Chrome) -> bool:
        if "complete." in page.text("#trace-summary"):
            return True
        page.find("#reload-trace").click()
        return False

    page.wait(whole, "a complete trace", timeout=90)
    services = set(page.attrs("#waterfall .span-row[data-span-id]", "data-service"))
    assert {"orchestrator", "researcher", "coder"} <= services
    chats = [
        i
        for i, title in enumerate(page.attrs("#waterfall .span-row[data-span-id]", "title"))
        if "gen_ai.usage.input_tokens" in title
    ]
    assert chats, "no model-call span carries its tokens"
    page.all("#waterfall .span-row[data-span-id]")[chats[0]].click()
    page.wait(
        lambda d: "gen_ai.usage.output_tokens" in page.text("#span-detail"), "the span's attributes"
    )
    page.shot("trace")

    page.open("ui/#/tasks")
    row = f"#task-rows tr[data-task-id='{task_id}']"
    page.wait(lambda d: page.attrs(row, "data-status") == ["succeeded"], "the task in the list")
    page.shot("tasks")


def test_a_result_carrying_script_is_shown_as_text(page: Dashboard) -> None:
    _signed_in(page)
    page.submit('<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2">')
    assert page.wait_status("succeeded", "failed", timeout=240) == "succeeded"
    page.wait(lambda d: "Synthesis for" in page.text("#answer"), "the rendered answer")
    assert "<script>window.__pwned = 1</script>" in page.text("#answer")
    assert 'onerror="window.__pwned = 2"' in page.text("#answer")
    assert page.all("#answer script") == [] and page.all("#answer img") == []
    assert page.driver.execute_script("return window.__pwned === undefined")
    page.shot("injected-answer")


def test_a_slow_task_is_cancelled_from_the_page(page: Dashboard, compose_mesh: ComposeMesh) -> None:
    _signed_in(page)
    set_llm(compose_mesh, delay_ms=5000)
    try:
        page.submit("A slow task that the user cancels")
        page.wait(lambda d: page.task_status() == "running", "the task to run", timeout=120)
        page.find("#cancel-task").click()
        assert page.wait_status("cancelled", "failed", timeout=180) == "cancelled"
        page.wait(lambda d: "task.cancelling" in page.attrs("#events li", "data-kind"), "the event")
        page.shot("cancelled")
    finally:
        set_llm(compose_mesh, delay_ms=150)


def test_the_workers_page_lists_each_replica_and_the_queues(page: Dashboard) -> None:
    _signed_in(page)
    page.open("ui/#/workers")
    page.wait(
        lambda d: len(page.attrs("#worker-rows tr[data-role]", "data-role")) >= 2, "the workers"
    )
    assert set(page.attrs("#worker-rows tr[data-role]", "data-role")) == {"researcher", "coder"}
    assert set(page.attrs("#queues dd", "data-role")) == {"researcher", "coder"}
    page.shot("workers")
