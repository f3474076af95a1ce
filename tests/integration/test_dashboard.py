"""The dashboard in a real browser (Debian's Chromium) against the mesh as processes:
sign-in, a task submitted from the page and watched to the end, an injected answer
that stays text, cancel, the waterfall of a 500-span trace, 1,000 stored tasks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from agentmesh_shared.models import TaskStatus
from selenium import webdriver

from tests.support.browser import Dashboard, chromium
from tests.support.dashboard_data import append_trace, seed_finished_tasks
from tests.support.mesh import LocalMesh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    with chromium() as running:
        yield running


@pytest.fixture
def page(driver: webdriver.Chrome, mesh: LocalMesh) -> Dashboard:
    driver.delete_all_cookies()
    dashboard = Dashboard(driver, mesh.api_url, mesh.api_token)
    dashboard.open()
    driver.execute_script("sessionStorage.clear()")
    return dashboard


def test_a_wrong_token_is_refused_and_the_token_never_reaches_a_url(page: Dashboard) -> None:
    page.sign_in("not-the-token")
    page.wait(lambda d: "refused" in page.text("#sign-in"), "the refusal")
    assert not page.all("#task-rows")
    page.signed_in()
    assert page.token not in page.driver.current_url
    stored = page.driver.execute_script("return sessionStorage.getItem('agentmesh.token')")
    assert stored == page.token and page.driver.get_cookies() == []


def test_a_task_submitted_from_the_page_is_watched_to_its_answer(page: Dashboard) -> None:
    page.signed_in()
    task_id = page.submit("Explain the page's first task", budget=50000, steps=6, timeout=120)
    assert page.wait_status("succeeded") == "succeeded"
    page.wait(lambda d: "Synthesis for" in page.text("#answer"), "the rendered answer")
    roles = page.texts("#subtask-rows tr[data-subtask-id] td:nth-child(2)")
    assert sorted(roles) == ["coder", "researcher"]
    assert page.attrs("#subtask-rows tr[data-subtask-id]", "data-status") == ["succeeded"] * 2
    replicas = page.texts("#subtask-rows tr[data-subtask-id] td:nth-child(3)")
    assert all(r.startswith(("researcher-", "coder-")) for r in replicas), replicas
    kinds = set(page.attrs("#events li", "data-kind"))
    assert {
        "task.queued",
        "task.step",
        "subtask.queued",
        "subtask.succeeded",
        "task.succeeded",
    } <= kinds
    record = json.loads(
        page.driver.execute_script(
            "const r = await fetch(arguments[0], {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('agentmesh.token')}});"
            " return await r.text();",
            f"/tasks/{task_id}",
        )
    )
    assert record["limits"] == {"max_steps": 6, "token_budget": 50000, "timeout_s": 120.0}

    page.open("ui/#/tasks")
    row = f"#task-rows tr[data-task-id='{task_id}']"
    page.wait(lambda d: page.attrs(row, "data-status") == ["succeeded"], "the task in the list")
    assert page.texts(f"{row} td:nth-child(6)") == ["2/2"]


def test_an_answer_carrying_script_is_shown_as_text_and_nothing_runs(page: Dashboard) -> None:
    page.signed_in()
    hostile = (
        "<script>window.__pwned = 'script'</script> "
        "<img src=x onerror=\"window.__pwned = 'onerror'\"> and **bold**"
    )
    page.submit(hostile)
    page.wait_status("succeeded")
    page.wait(lambda d: "Synthesis for" in page.text("#answer"), "the rendered answer")
    answer = page.text("#answer")
    assert "<script>window.__pwned = 'script'</script>" in answer
    assert "onerror=\"window.__pwned = 'onerror'\"" in answer
    assert page.all("#answer script") == [] and page.all("#answer img") == []
    assert page.driver.execute_script("return window.__pwned === undefined")


def test_a_slow_task_is_cancelled_from_its_page(page: Dashboard, mesh: LocalMesh) -> None:
    page.signed_in()
    mesh.llm_admin(delay_ms=4000)
    try:
        page.submit("A slow task to cancel")
        page.wait(lambda d: page.find("#cancel-task").is_displayed(), "the cancel button")
        page.wait(lambda d: page.task_status() == "running", "the task to run", timeout=60)
        page.find("#cancel-task").click()
        assert page.wait_status("cancelled", timeout=120) == "cancelled"
        assert not page.find("#cancel-task").is_displayed()
    finally:
        mesh.llm_admin(delay_ms=0)


def test_workers_and_queues_are_listed_live(page: Dashboard) -> None:
    page.signed_in()
    page.open("ui/#/workers")
    page.wait(
        lambda d: len(page.attrs("#worker-rows tr[data-role]", "data-role")) >= 2, "the workers"
    )
    assert set(page.attrs("#worker-rows tr[data-role]", "data-role")) == {"researcher", "coder"}
    assert set(page.attrs("#queues dd", "data-role")) == {"researcher", "coder"}
    assert all(t.endswith("ago") for t in page.texts("#worker-rows tr[data-role] td:nth-child(5)"))
    page.shot("integration-workers")


def _redis(mesh: LocalMesh) -> redis.Redis:
    return redis.Redis.from_url(mesh.redis_url, decode_responses=True)


def test_a_thousand_tasks_page_and_filter(page: Dashboard, mesh: LocalMesh) -> None:
    records = seed_finished_tasks(_redis(mesh), 1000)
    page.signed_in()
    page.wait(lambda d: "stored" in page.text("#task-count"), "the count")
    stored = int(page.text("#task-count").split("·")[1].split()[0].replace(",", ""))
    assert stored >= 1000
    ids = "#task-rows tr[data-task-id]"
    assert len(page.attrs(ids, "data-task-id")) == 25
    seen: set[str] = set()
    for _ in range(3):
        first = page.attrs(ids, "data-task-id")[0]
        seen.update(page.attrs(ids, "data-task-id"))
        page.find("#page-older").click()
        page.wait(
            lambda d, first=first: page.attrs(ids, "data-task-id")[0] != first, "the next page"
        )
    assert len(seen) == 75
    page.filter_status("failed")
    page.wait(lambda d: set(page.attrs(ids, "data-status")) == {"failed"}, "only failed tasks")
    newest_failed = next(r.id for r in reversed(records) if r.status is TaskStatus.FAILED)
    assert page.attrs(ids, "data-task-id")[0] == newest_failed
    page.shot("integration-tasks-1000")


def test_a_500_span_trace_is_drawn_as_a_waterfall(page: Dashboard, mesh: LocalMesh) -> None:
    assert mesh.traces_file is not None
    record = append_trace(_redis(mesh), mesh.traces_file, 500)
    page.signed_in()
    page.open(f"ui/#/tasks/{record.id}/trace")
    page.wait(lambda d: len(page.all("#waterfall .span-row[data-span-id]")) == 500, "500 span rows")
    assert "500 spans" in page.text("#trace-summary")
    rows = page.all("#waterfall .span-row[data-span-id]")
    assert rows[0].get_attribute("data-service") == "orchestrator"  # the root first
    services = {r.get_attribute("data-service") for r in rows}
    assert services == {"orchestrator", "researcher", "coder"}
    colours = {
        page.driver.execute_script(
            "return getComputedStyle(arguments[0].querySelector('.bar')).backgroundColor", r
        )
        for r in (rows[1], rows[2], rows[3])
    }
    assert len(colours) == 3  # one colour per service
    assert "gen_ai.usage.input_tokens = 7" in (rows[5].get_attribute("title") or "")
    rows[5].click()
    page.wait(
        lambda d: "gen_ai.usage.output_tokens" in page.text("#span-detail"), "the span's attributes"
    )
    page.shot("integration-trace-500")


def trace_of(mesh: LocalMesh, task_id: str) -> dict[str, Any]:
    # The route may hold the request for its whole wait: the client's timeout covers it.
    reply = mesh.api.get(f"/tasks/{task_id}/trace", params={"wait": 20}, timeout=35)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_the_waterfall_shows_the_spans_the_trace_route_serves(
    page: Dashboard, mesh: LocalMesh
) -> None:
    page.signed_in()
    task_id = page.submit("A task whose trace we draw")
    page.wait_status("succeeded")
    expected = trace_of(mesh, task_id)
    page.find("#open-trace").click()
    page.wait(lambda d: page.all("#waterfall .span-row[data-span-id]"), "the waterfall")
    page.wait(
        lambda d: len(page.all("#waterfall .span-row[data-span-id]")) >= len(expected["spans"]),
        "every span",
    )
    drawn = {
        r.get_attribute("data-span-id") for r in page.all("#waterfall .span-row[data-span-id]")
    }
    assert {s["span_id"] for s in expected["spans"]} <= drawn
    chat = next(
        r
        for r in page.all("#waterfall .span-row[data-span-id]")
        if "gen_ai.usage.input_tokens" in (r.get_attribute("title") or "")
    )
    chat.click()
    page.wait(lambda d: "gen_ai.usage.input_tokens" in page.text("#span-detail"), "the detail")
