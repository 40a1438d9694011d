"""The producer side: validate a run at the edge, enqueue it, follow its result and tokens."""

from app.producer.results import RunResult
from app.producer.submit import submit, submit_many

__all__ = ["RunResult", "submit", "submit_many"]
