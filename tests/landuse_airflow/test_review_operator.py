"""The review step's operator: an answer given to an earlier try stands."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from uuid import uuid4

import pytest
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.api.datamodels._generated import HITLDetailResponse, HITLUser

from landuse_airflow.operators.review import PUBLISH, ChangeReviewOperator


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the operator did: read an earlier answer, or ask again (the base operator)."""
    calls: list[str] = []
    answered = HITLDetailResponse(
        response_received=True, chosen_options=[PUBLISH], params_input={},
        responded_at=datetime(2026, 12, 7, tzinfo=UTC),
        responded_by_user=HITLUser(id="ana", name="ana"))

    def earlier(ti_id: object) -> HITLDetailResponse:
        calls.append("read")
        return answered

    monkeypatch.setattr("airflow.sdk.execution_time.hitl.get_hitl_detail_content_detail",
                        earlier)
    monkeypatch.setattr(HITLOperator, "execute", lambda self, context: calls.append("ask"))
    return calls


def _context(try_number: int) -> dict:
    return {"params": {"review_timeout": 1.0},
            "ti": SimpleNamespace(id=uuid4(), try_number=try_number)}


def test_a_retry_keeps_the_answer_its_first_try_got(asked: list[str]):
    op = ChangeReviewOperator(task_id="review", subject="s")
    result = op.execute(_context(try_number=2))
    assert asked == ["read"]
    assert result["chosen_options"] == [PUBLISH]
    assert result["responded_by_user"] == {"id": "ana", "name": "ana"}


def test_a_first_try_asks(asked: list[str]):
    op = ChangeReviewOperator(task_id="review", subject="s")
    op.execute(_context(try_number=1))
    assert asked == ["ask"]
    assert op.response_timeout.days == 1
