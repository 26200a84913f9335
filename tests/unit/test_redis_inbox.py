"""A worker's Redis inbox (hand.lua, RedisBackend._read_inbox): each hand-off is
delivered once, also when the reader reads ``{p:q}:got:<worker>`` again after a lost
connection while a claim acknowledges the same hand-off on another connection."""

from __future__ import annotations

import json

from hydrapool.backends.base import Claim
from hydrapool.backends.redis.backend import _Inbox


def item(tag: str, job_id: str) -> str:
    job = {
        "id": job_id,
        "task": "t",
        "channel": "default",
        "state": "running",
        "priority": 0,
        "attempts": 1,
        "max_attempts": 1,
        "payload": "{}",
        "created_at": "1.0",
        "run_at": "1.0",
        "started_at": "2.0",
        "lease": tag,
        "lease_expires_at": "32.0",
        "worker": "w",
        "was": "queued",
    }
    return f"1\t{tag}\t{json.dumps([job])}"


def test_a_hand_off_is_delivered_once_across_a_re_read_and_an_acknowledgement() -> None:
    inbox = _Inbox("k:in:w", "k:got:w", 6.0)
    got: list[Claim] = []
    x = item("tok.1", "job-x")
    assert inbox.take("q", x, got.extend) is False
    assert [c.job.id for c in got] == ["job-x"]
    assert got[0].lease == "tok.1"
    assert inbox.to_ack == ["tok.1"]
    # A claim takes the tag to acknowledge it; the store drops the item from got.
    inbox.to_ack = []
    # A re-read of got made before that claim ran, heard after its reply: X again.
    assert inbox.catch_up("q", [x], got.extend) is False
    assert [c.job.id for c in got] == ["job-x"], "delivered twice"
    # The next re-read no longer holds it: its tag is forgotten (tags are never reused).
    y = item("tok.2", "job-y")
    assert inbox.catch_up("q", [y], got.extend) is False
    assert [c.job.id for c in got] == ["job-x", "job-y"]
    assert inbox.seen == {"tok.2"}
    # The closing marker ends the reader, also when it comes in a re-read.
    assert inbox.catch_up("q", [y, "~"], got.extend) is True
    assert [c.job.id for c in got] == ["job-x", "job-y"]


def test_an_unreadable_item_is_skipped_and_the_reader_goes_on() -> None:
    inbox = _Inbox("k:in:w", "k:got:w", 6.0)
    got: list[Claim] = []
    assert inbox.take("q", "not an item", got.extend) is False
    assert inbox.take("q", "1\ttok.3\t[{}]", got.extend) is False  # no fields
    assert got == []
    assert inbox.take("q", item("tok.4", "job-z"), got.extend) is False
    assert [c.job.id for c in got] == ["job-z"]
