"""Everything that touches Celery or kombu beyond their public API, fenced in one package."""
