"""The review step of ``change_detection``: a human-in-the-loop task per compared county.

The task waits in Airflow's ``awaiting_input`` state (holding no worker slot) until an
analyst finishes the county's review in the Land use view ("Done" answers it through
Airflow's REST API with the analyst's own token) or answers it in Required Actions. After
``review_timeout`` days it resumes by itself with :data:`UNREVIEWED`, so a run never waits
for ever::

    ChangeReviewOperator.partial(task_id="review").expand_kwargs(requests)

where each request holds ``subject`` and ``body`` (see :func:`review_request`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

PUBLISH = "Publish the review"
UNREVIEWED = "Publish unreviewed"
OPTIONS = [PUBLISH, UNREVIEWED]
REVIEW_TIMEOUT_DAYS = 14.0


class ChangeReviewOperator(HITLOperator):
    """Wait for an analyst to review a change report's flagged tiles.

    The wait is the run's ``review_timeout`` Param in days (read when the task starts, so
    that a manual run can shorten it); on timeout the task chooses :data:`UNREVIEWED`.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("options", OPTIONS)
        kwargs.setdefault("defaults", [UNREVIEWED])
        super().__init__(**kwargs)

    def execute(self, context: Context) -> Any:
        days = float(context["params"].get("review_timeout", REVIEW_TIMEOUT_DAYS))
        self.response_timeout = timedelta(days=days)
        earlier = _earlier_answer(context)
        if earlier is not None:
            return self.execute_complete(context, earlier)
        return super().execute(context)


def _earlier_answer(context: Context) -> dict[str, Any] | None:
    """The answer an earlier try of this task got, if any.

    Airflow 3.3 retries a waiting task that is answered before the scheduler has handled
    its parking (within about a second, measured in the stack test), and a retry's request
    clears the answer: asking again would drop what the analyst chose.
    """
    from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail

    ti = context["ti"]
    if ti.try_number <= 1:
        return None
    try:
        answer = get_hitl_detail_content_detail(ti.id)
    except Exception:  # no request from an earlier try (cleared, or it failed before asking)
        return None
    if not answer.response_received:
        return None
    by = answer.responded_by_user
    return {"chosen_options": answer.chosen_options or [],
            "params_input": answer.params_input or {}, "responded_at": answer.responded_at,
            "responded_by_user": {"id": by.id, "name": by.name} if by else None}


def review_link(county: str, year_a: int, year_b: int, base_url: str = "") -> str:
    """The Land use view's review page of one report."""
    return f"{base_url.rstrip('/')}/landuse/review/{county}/{year_a}-{year_b}"


def review_request(headline: dict[str, Any], waiting: int, flagged: int,
                   base_url: str = "") -> dict[str, str]:
    """The subject and body of one county's review task."""
    county, a, b = headline["county"], headline["year_a"], headline["year_b"]
    link = review_link(county, a, b, base_url)
    return {
        "subject": f"Review the change in {county} {a}-{b}",
        "body": (f"**{flagged}** tiles of {county} were flagged as changed between {a} and "
                 f"{b}; the review queue holds **{waiting}** tiles (flagged first, then the "
                 f"model's least confident calls).\n\n"
                 f"[Review them in the Land use view]({link}) and press *Done* there, or "
                 f"choose here: *{PUBLISH}* publishes the report with the answers given so "
                 f"far; *{UNREVIEWED}* publishes it as unreviewed."),
    }
