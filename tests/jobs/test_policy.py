"""Confinement: a trigger records only jobs that read and write where the operator allowed."""

from __future__ import annotations

import json
import os

import pytest

from hyperbatch.jobs.policy import AccessPolicy
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.messages import Delivery
from tests.jobs.control_plane import spec_dict, write_input


def message(spec: dict, message_id: str) -> Delivery:
    return Delivery(message_id, json.dumps(spec).encode(), {})


def test_a_message_cannot_make_a_job_read_or_write_outside_the_allowed(tmp_path):
    """The attack that was seen: input /etc/passwd, output /tmp/elsewhere, through a trigger."""
    allowed = tmp_path / "allowed"
    good_input = write_input(str(allowed / "in.jsonl"))
    store = JobStore(str(allowed / "jobs"))
    handler = TriggerHandler(store, None, allow=[str(allowed)])
    attacks = {
        "etc": spec_dict("/etc/passwd", store.root),
        "elsewhere": spec_dict(good_input, str(tmp_path / "elsewhere")),
        "dotdot": spec_dict(str(allowed / ".." / "secret" / "*.jsonl"), store.root),
        "model": {**spec_dict(good_input, store.root), "model": "/etc", "engine": "jax"},
    }
    os.symlink("/etc", allowed / "link")
    attacks["symlink"] = spec_dict(str(allowed / "link" / "passwd"), store.root)
    for name, spec in attacks.items():
        outcome = handler.handle(message(spec, f"attack-{name}"))
        assert (name, outcome.kind) == (name, "rejected")
        assert "outside where jobs of this store may read and write" in outcome.detail
    assert store.list() == []
    assert not (tmp_path / "elsewhere").exists()
    reasons = [r["reason"] for r in store.rejected()]
    assert len(reasons) == len(attacks)
    assert all("outside where jobs of this store may read and write" in r for r in reasons)
    ok = handler.handle(message(spec_dict(good_input, store.root), "fine"))
    assert (ok.kind, store.get(ok.job_id).state) == ("submitted", "QUEUED")


def test_a_local_store_allows_nothing_local_unless_told(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    spec = spec_dict(write_input(str(tmp_path / "in.jsonl")), store.root)
    outcome = TriggerHandler(store, None).handle(message(spec, "m1"))
    assert outcome.kind == "rejected"
    assert "pass --allow" in outcome.detail


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("gs://jobs-bucket/in/a.jsonl", True),
        ("gs://jobs-bucket/in/*.jsonl", True),
        ("gs://other-bucket/in/a.jsonl", False),
        ("gs://jobs-bucket-evil/a.jsonl", False),
        ("gs://jobs-bucket/in/../../x", False),
        ("gs://jobs-bucket/./x", False),
        ("/etc/passwd", False),
    ],
)
def test_the_default_is_the_store_bucket(url, allowed):
    policy = AccessPolicy.for_store("gs://jobs-bucket/jobs")
    assert policy.allows(url) is allowed


def test_prefixes_are_whole_folders(tmp_path):
    policy = AccessPolicy(["gs://b/team-a", str(tmp_path / "data")])
    assert policy.allows("gs://b/team-a/x.jsonl")
    assert policy.allows("gs://b/team-a")
    assert not policy.allows("gs://b/team-ab/x.jsonl")
    assert policy.allows(str(tmp_path / "data" / "in.jsonl"))
    assert policy.allows(str(tmp_path / "data"))
    assert not policy.allows(str(tmp_path / "data-other" / "in.jsonl"))
