"""Workers on a Redis that requires a password and TLS: runs complete, bad configs fail at start.

The Redis is the tests' own (``secure_redis``: requirepass, TLS port only, a certificate made
by trustme); the worker is a real ``agentq worker`` process configured by environment only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from app.celery_ext.app import create_celery
from app.config import RedisTLSSettings, Settings
from app.local.workers import WorkerProcess
from app.producer.submit import submit
from app.tasks.relay import TOKEN

pytestmark = pytest.mark.e2e

WRONG = "not-the-password-5c7a"
RUN = 'add [tool:calculator {"expression": "20+22"}]'


@pytest.fixture
def producer(secure_settings: Settings):
    app = create_celery(secure_settings)
    yield app
    app.close()


@pytest.fixture
def workers(tmp_path: Path):
    """Factory of worker processes (not started); every one is stopped by PID afterwards."""
    made: list[WorkerProcess] = []

    def make(settings: Settings, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(settings, ["research"], log_dir=tmp_path, extra_env=env)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


def _masked(url: str) -> str:
    """``url`` as Celery's banner shows it when the connection has a password."""
    return url.replace("rediss://", "rediss://:**@")


def _run_and_read_log(worker: WorkerProcess, producer) -> str:
    """Start ``worker``, push a streamed two-step run through it, stop it; its whole log."""
    worker.start(producer)
    result = submit("research", RUN, stream=True, celery=producer)
    tokens = [e.text for e in result.events(timeout=60) if e.kind == TOKEN]
    assert result.get(timeout=60) == "Answer: 42"
    assert "".join(tokens).endswith("Answer: 42")
    assert worker.stop() == 0
    return worker.log_path.read_text()


def test_a_run_completes_over_tls_with_the_password_and_the_log_holds_no_secret(
    secure_redis, secure_settings, producer, workers
) -> None:
    log = _run_and_read_log(workers(secure_settings), producer)
    assert f"transport:   {_masked(secure_redis.url)}" in log  # Celery's banner
    assert secure_redis.password not in log


def test_the_password_may_come_from_a_file(
    secure_redis, secure_settings, producer, workers, tmp_path: Path
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(secure_redis.password + "\n")
    env = {"AGENTQ_REDIS_PASSWORD_FILE": str(secret)}
    worker = workers(secure_settings.model_copy(update={"redis_password": None}), env)
    assert secure_redis.password not in _run_and_read_log(worker, producer)


def test_a_password_in_the_url_is_masked_in_the_banner(
    secure_redis, secure_settings, producer, workers
) -> None:
    url = secure_redis.url.replace("rediss://", f"rediss://:{secure_redis.password}@")
    settings = secure_settings.model_copy(update={"redis_url": url, "redis_password": None})
    log = _run_and_read_log(workers(settings), producer)
    assert f"transport:   {_masked(secure_redis.url)}" in log
    assert secure_redis.password not in log


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "refused the password (AUTH failed): check AGENTQ_REDIS_PASSWORD"),
        ("no password", "requires a password (NOAUTH): set AGENTQ_REDIS_PASSWORD"),
        ("plain text", "closed the connection: the server may require TLS; use rediss://"),
        ("unknown CA", ": certificate verify failed ("),
        ("missing password file", "cannot read the secret file (No such file or directory)"),
    ],
)
def test_a_bad_redis_config_stops_the_worker_at_start_with_one_clear_line(
    case: str, expected: str, secure_redis, secure_settings, workers, tmp_path: Path
) -> None:
    settings, env = secure_settings, {}
    if case == "wrong password":
        settings = settings.model_copy(update={"redis_password": SecretStr(WRONG)})
    elif case == "no password":
        settings = settings.model_copy(update={"redis_password": None})
    elif case == "plain text":
        plain = secure_redis.url.replace("rediss://", "redis://")
        settings = settings.model_copy(update={"redis_url": plain})
    elif case == "unknown CA":
        tls = RedisTLSSettings(ca_file=secure_redis.other_ca_file)
        settings = settings.model_copy(update={"redis_tls": tls})
    else:
        settings = settings.model_copy(update={"redis_password": None})
        env = {"AGENTQ_REDIS_PASSWORD_FILE": str(tmp_path / "not-mounted")}
    worker = workers(settings, env).spawn()
    assert worker.proc is not None
    assert worker.proc.wait(timeout=60) != 0
    log = worker.log_path.read_text()
    last = log.strip().splitlines()[-1]
    assert last.startswith("agentq: ") and expected in last, log
    if case != "missing password file":
        assert f"Redis at {settings.redis_url}" in last
    assert secure_redis.password not in log and WRONG not in log
