from __future__ import annotations

import pytest
from agentmesh_shared.models import Role, SubtaskMessage, SubtaskResult, TaskRequest, Usage
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


@given(text=st.text(min_size=1).filter(lambda t: t.strip()))
def test_any_non_blank_text_is_a_valid_request_and_round_trips(text: str) -> None:
    req = TaskRequest(text=text)
    assert req.text == text.strip()
    assert TaskRequest.model_validate_json(req.model_dump_json()) == req


@given(text=st.text(alphabet=" \t\n\r", max_size=20))
def test_blank_text_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError):
        TaskRequest(text=text)


@given(
    task_id=ids,
    subtask_id=ids,
    role=st.sampled_from(list(Role)),
    instruction=st.text(min_size=1, max_size=200),
)
def test_subtask_messages_round_trip_through_json(
    task_id: str, subtask_id: str, role: Role, instruction: str
) -> None:
    msg = SubtaskMessage(
        task_id=task_id,
        subtask_id=subtask_id,
        role=role,
        instruction=instruction,
        max_steps=3,
        deadline=1.0,
    )
    assert SubtaskMessage.model_validate(msg.model_dump(mode="json")) == msg


@given(
    payload=st.dictionaries(
        st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(max_size=10)), max_size=6
    )
)
def test_arbitrary_payloads_never_pass_as_subtasks_by_accident(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SubtaskMessage.model_validate(payload)


def test_unknown_fields_and_versions_are_refused() -> None:
    good = {
        "task_id": "t",
        "subtask_id": "s",
        "role": "coder",
        "instruction": "x",
        "max_steps": 1,
        "deadline": 1.0,
    }
    SubtaskMessage.model_validate(good)
    with pytest.raises(ValidationError):
        SubtaskMessage.model_validate({**good, "extra": 1})
    with pytest.raises(ValidationError):
        SubtaskMessage.model_validate({**good, "schema_version": 2})
    with pytest.raises(ValidationError):
        SubtaskMessage.model_validate({**good, "role": "manager"})
    with pytest.raises(ValidationError):
        SubtaskMessage.model_validate({**good, "task_id": "has space"})


def test_usage_adds_up() -> None:
    total = Usage(input_tokens=3, output_tokens=4) + Usage(input_tokens=10, output_tokens=1)
    assert (total.input_tokens, total.output_tokens, total.total) == (13, 5, 18)
    with pytest.raises(ValidationError):
        Usage(input_tokens=-1)
    with pytest.raises(ValidationError):
        SubtaskResult.model_validate({"task_id": "t"})
