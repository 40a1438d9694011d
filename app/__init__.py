"""agentq: run AI agents at scale on Celery.

from app import submit
answer = submit("research", "What is 6*7?").get(timeout=30)
"""

from app.producer import submit, submit_many

__all__ = ["submit", "submit_many"]
