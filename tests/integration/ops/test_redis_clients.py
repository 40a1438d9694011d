"""Clients and the start-up check against a Redis that requires a password and TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.celery_ext.app import create_celery
from app.config import RedisTLSSettings, Settings
from app.errors import ConfigurationError
from app.ops.redis_clients import async_redis_client, check_redis, redis_client
from tests.fixtures.secure_redis import SecureRedis

pytestmark = pytest.mark.integration

WRONG = "not-the-password-9d1e"


def _settings(secure: SecureRedis, **overrides) -> Settings:
    values = {
        "redis_url": secure.url,
        "redis_password": SecretStr(secure.password),
        "redis_tls": RedisTLSSettings(ca_file=secure.ca_file),
        **overrides,
    }
    return Settings(_env_file=None, **values)


def _failure(settings: Settings) -> str:
    with pytest.raises(ConfigurationError) as info:
        check_redis(settings)
    return str(info.value)


def test_clients_from_settings_speak_tls_with_the_password(secure_redis) -> None:
    settings = _settings(secure_redis)
    check_redis(settings)
    client = redis_client(settings)
    client.set("agentq:test:tls", "yes")
    assert client.get("agentq:test:tls") == b"yes"
    client.delete("agentq:test:tls")
    client.close()

    async def ping() -> bool:
        aclient = async_redis_client(settings)
        try:
            return bool(await aclient.ping())
        finally:
            await aclient.aclose()

    assert asyncio.run(ping())


def test_celery_broker_and_result_backend_use_the_password_and_tls(secure_redis) -> None:
    app = create_celery(_settings(secure_redis))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            conn.default_channel.client.ping()
        app.backend.client.ping()
        assert secure_redis.password not in app.conf.broker_url
        assert secure_redis.password not in str(app.conf.humanize(with_defaults=True))
    finally:
        app.close()


def test_wrong_password_names_the_url_and_the_setting_but_no_password(secure_redis) -> None:
    message = _failure(_settings(secure_redis, redis_password=SecretStr(WRONG)))
    assert message == (
        f"Redis at {secure_redis.url} refused the password (AUTH failed): "
        "check AGENTQ_REDIS_PASSWORD (or AGENTQ_REDIS_PASSWORD_FILE)"
    )


def test_a_wrong_password_in_the_url_is_masked(secure_redis) -> None:
    url = secure_redis.url.replace("rediss://", f"rediss://:{WRONG}@")
    message = _failure(_settings(secure_redis, redis_url=url))
    assert WRONG not in message and secure_redis.password not in message
    assert "rediss://:***@127.0.0.1" in message and "the password in the URL" in message


def test_the_urls_own_password_wins(secure_redis) -> None:
    url = secure_redis.url.replace("rediss://", f"rediss://:{secure_redis.password}@")
    check_redis(_settings(secure_redis, redis_url=url, redis_password=SecretStr(WRONG)))


def test_no_password_says_to_set_one(secure_redis) -> None:
    assert "requires a password (NOAUTH): set AGENTQ_REDIS_PASSWORD" in _failure(
        _settings(secure_redis, redis_password=None)
    )


def test_plain_text_to_the_tls_port_says_the_server_may_require_tls(secure_redis) -> None:
    plain = secure_redis.url.replace("rediss://", "redis://")
    assert _failure(_settings(secure_redis, redis_url=plain)) == (
        f"Redis at {plain} closed the connection: the server may require TLS; "
        "use rediss:// and AGENTQ_REDIS_TLS__CA_FILE"
    )


def test_a_certificate_from_an_unknown_ca_fails_verification(secure_redis) -> None:
    tls = RedisTLSSettings(ca_file=secure_redis.other_ca_file)
    message = _failure(_settings(secure_redis, redis_tls=tls))
    assert message.startswith(f"Redis at {secure_redis.url}: certificate verify failed (")
    assert message.endswith("set AGENTQ_REDIS_TLS__CA_FILE to the CA that signed the "
                            "server's certificate")  # fmt: skip


def test_a_host_name_the_certificate_does_not_name_fails_verification(secure_redis) -> None:
    url = secure_redis.url.replace("127.0.0.1", "localhost")
    assert "Hostname mismatch" in _failure(_settings(secure_redis, redis_url=url))


def test_verify_off_accepts_any_certificate(secure_redis) -> None:
    check_redis(_settings(secure_redis, redis_tls=RedisTLSSettings(verify=False)))


def test_a_missing_ca_file_is_named(secure_redis, tmp_path: Path) -> None:
    tls = RedisTLSSettings(ca_file=tmp_path / "absent.pem")
    assert _failure(_settings(secure_redis, redis_tls=tls)).startswith(
        f"AGENTQ_REDIS_TLS__CA_FILE={tmp_path / 'absent.pem'}: no such file"
    )


def test_tls_to_a_plain_text_port_says_the_port_may_not_speak_tls(redis_url) -> None:
    url = redis_url.replace("redis://", "rediss://")
    settings = Settings(_env_file=None, redis_url=url, redis_connect_timeout_s=0.5)
    assert "did not complete a TLS handshake within 0.5 s: the port may not speak TLS" in (
        _failure(settings)
    )


def test_a_starting_worker_waits_for_a_redis_that_is_not_up_yet() -> None:
    import threading

    from app.local.processes import free_port
    from app.local.redis import RedisServer

    server = RedisServer()
    server.port = free_port()
    settings = Settings(_env_file=None, redis_url=server.url, redis_startup_wait_s=30)
    late = threading.Timer(1.5, server.start)  # a Redis restarting beside the worker
    late.start()
    try:
        check_redis(settings)  # returns once it answers, instead of failing at once
        assert redis_client(settings).ping()
    finally:
        late.join()
        server.stop()
    # Nobody listening past the wait: the clear error, after the wait.
    gone = Settings(_env_file=None, redis_url=server.url, redis_startup_wait_s=0)
    with pytest.raises(ConfigurationError, match="refused the connection"):
        check_redis(gone)
