"""The pure rules of external tasks, and their settings."""

import pytest

from bridge.external import (
    ClaimError,
    claim_job_id,
    claim_kinds,
    external_kinds,
    is_claim,
    stale_message,
)
from bridge.messages import job_id_for
from bridge.settings import Settings, SettingsError


def test_external_is_always_an_external_kind():
    assert external_kinds(()) == ("external",)
    assert external_kinds(("review", "external", "agent")) == ("agent", "external", "review")


def test_a_claim_takes_every_external_kind_unless_it_names_some():
    configured = ("agent", "external")
    assert claim_kinds(None, configured) == configured
    assert claim_kinds([], configured) == configured
    assert claim_kinds(["agent", "agent"], configured) == ("agent",)


def test_a_claim_of_a_kind_the_dispatcher_runs_is_refused():
    with pytest.raises(ClaimError, match=r"'echo' are not external .*BRIDGE_EXTERNAL_KINDS"):
        claim_kinds(["external", "echo"], ("external",))


def test_a_claim_job_id_is_told_apart_from_an_rq_job_id():
    claim = claim_job_id("abc123", 7)
    assert claim == "external-abc123-t7" and is_claim(claim)
    assert not is_claim(job_id_for("external-x", "abc123", 7))  # an RQ job, whatever the id
    assert not is_claim(None)


@pytest.mark.parametrize(
    ("attempt", "task_attempt", "status", "external", "says"),
    [
        (1, 2, "working", True, "the task is at attempt 2 (working); nothing changed"),
        (2, 2, "done", True, "that attempt already ended (the task is done)"),
        (2, 2, "cancelled", True, "the task is cancelled"),
        (1, 1, "queued", False, "it is not an external task"),
    ],
)
def test_a_refusal_says_why_in_one_line(attempt, task_attempt, status, external, says):
    message = stale_message(
        "t", attempt, task_attempt=task_attempt, status=status, external=external
    )
    assert message.startswith(f"stale attempt {attempt} of task 't': ")
    assert says in message and "\n" not in message


def test_external_settings_come_from_the_environment_and_back():
    settings = Settings.from_env(
        {"BRIDGE_EXTERNAL_KINDS": "agent, review", "BRIDGE_CLAIM_TTL": "2.5"}
    )
    assert settings.all_external_kinds == ("agent", "external", "review")
    assert settings.claim_ttl == 2.5
    assert Settings.from_env(settings.as_env()) == settings
    assert Settings().claim_ttl == 60.0 and Settings().all_external_kinds == ("external",)


@pytest.mark.parametrize("ttl", ["0", "-1", "nan", "soon"])
def test_a_claim_ttl_must_be_a_positive_number(ttl):
    with pytest.raises(SettingsError, match="BRIDGE_CLAIM_TTL"):
        Settings.from_env({"BRIDGE_CLAIM_TTL": ttl})
