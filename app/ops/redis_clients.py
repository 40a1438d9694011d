"""Every Redis client agentq opens, built from settings in one place, and the start-up check.

A client gets the configured password (unless its URL has one), the TLS certificates for
``rediss://`` URLs, timeouts and a short retry on connection errors. A ``sentinel://`` URL
(kombu's syntax: ``sentinel://host1:26379/0;sentinel://host2:26379/0``) gives a client of
the master the Sentinels name for ``redis_sentinel_master``: redis-py asks them again
on every new connection, and drops a connection to a master demoted by a failover (its
READONLY reply), so the retry reconnects to the new master. :func:`check_redis` pings each
Redis the settings name, checks that it keeps its data, and turns a failure into one line
saying what is wrong and what to do, with the URL's password masked.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from app.config import RedisTLSSettings, Settings, mask_url
from app.config.sentinel import is_sentinel, parse_sentinel_url
from app.errors import ConfigurationError

log = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL_S = 30  # ping a connection idle this long before reuse (NAT/LB drops)
RETRIES = 3


def is_tls(url: str) -> bool:
    """Whether ``url`` asks for TLS (``rediss://``)."""
    return url.startswith("rediss://")


def ssl_options(tls: RedisTLSSettings) -> dict[str, Any]:
    """The ``ssl_*`` options for a ``rediss://`` URL, as redis-py, kombu and Celery take them."""
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
        "ssl_check_hostname": tls.verify,
        "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
        "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
        "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
    }


def _password(settings: Settings, url: str) -> str | None:
    """The password to send to ``url``: its own, else the configured one."""
    if urlsplit(url).password or settings.redis_password is None:
        return None  # redis-py takes the URL's
    return settings.redis_password.get_secret_value()


def client_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py keyword arguments for ``url``: password, TLS, timeouts (no retry policy)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    password = _password(settings, url)
    if password is not None:
        options["password"] = password
    if is_tls(url):
        options.update(ssl_options(settings.redis_tls))
    return options


def _sentinel_options(
    url: str, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The Sentinels of ``url`` and ``options`` for its master: its database and password."""
    address = parse_sentinel_url(url)
    options = {**options, "db": address.db}
    if address.password is not None:
        options.setdefault("password", address.password)
        if address.username:
            options.setdefault("username", address.username)
    return address.sentinels, options


def redis_client(settings: Settings, url: str | None = None, **overrides: Any) -> redis.Redis:
    """A client for ``url`` (default ``settings.redis_url``); ``overrides`` win over settings.
    For a ``sentinel://`` URL, a client of the master that follows it through failovers."""
    url = url or settings.redis_url
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES)
    options = {"retry": retry, **client_options(settings, url), **overrides}
    if is_sentinel(url):
        sentinels, options = _sentinel_options(url, options)
        return redis.sentinel.Sentinel(sentinels, **options).master_for(
            settings.redis_sentinel_master
        )
    return redis.Redis.from_url(url, **options)


def async_redis_client(settings: Settings, url: str | None = None) -> redis.asyncio.Redis:
    """:func:`redis_client` for asyncio."""
    url = url or settings.redis_url
    retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES)
    options = {"retry": retry, **client_options(settings, url)}
    if is_sentinel(url):
        sentinels, options = _sentinel_options(url, options)
        return redis.asyncio.sentinel.Sentinel(sentinels, **options).master_for(
            settings.redis_sentinel_master
        )
    return redis.asyncio.Redis.from_url(url, **options)


def sentinel_transport_options(settings: Settings, url: str) -> dict[str, Any]:
    """kombu's and Celery's transport options for ``url``: the master's name for Sentinels."""
    return {"master_name": settings.redis_sentinel_master} if is_sentinel(url) else {}


def celery_redis_options(settings: Settings) -> dict[str, Any]:
    """Celery settings giving the broker and result backend the password and TLS."""
    conf: dict[str, Any] = {}
    if settings.redis_password is not None:
        # Not put in the URLs, so app.conf's URLs hold no secret; a URL's own password wins.
        conf["broker_password"] = settings.redis_password.get_secret_value()
        conf["redis_password"] = settings.redis_password.get_secret_value()
    if is_tls(settings.broker):
        conf["broker_use_ssl"] = ssl_options(settings.redis_tls)
    if is_tls(settings.backend):
        conf["redis_backend_use_ssl"] = ssl_options(settings.redis_tls)
    return conf


def check_redis(settings: Settings) -> list[str]:
    """Ping the broker, result backend and Redis of ``settings`` and check that each keeps
    its data (:mod:`app.ops.redis_durability`); ConfigurationError on failure, else the
    warnings for the worker to log (persistence off, something it could not read)."""
    from app.ops import redis_durability  # imports the metrics: a worker's start only

    urls = redis_durability.roles(settings)
    if any(is_tls(url) for url in urls):
        _check_tls_files(settings.redis_tls)
    timeout = settings.redis_connect_timeout_s  # a TLS handshake waits on the socket timeout
    deadline = time.monotonic() + settings.redis_startup_wait_s
    warnings: list[str] = []
    for url in urls:
        client = redis_client(settings, url, retry=Retry(NoBackoff(), 0), socket_timeout=timeout)
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.RedisError as exc:
                    # Not up yet (a restart, a pod starting beside it, the data still
                    # loading): wait, as Celery would; anything else is a configuration
                    # error and fails now.
                    if not _not_up_yet(exc) or time.monotonic() >= deadline:
                        raise ConfigurationError(describe_failure(settings, url, exc)) from None
                    log.warning("%s: waiting for Redis to come up", mask_url(url))
                    time.sleep(1.0)
            warnings += redis_durability.check(client, url, urls[url])
        finally:
            client.close()
    return warnings


def _not_up_yet(exc: Exception) -> bool:
    """Whether ``exc`` says Redis is not up yet (nobody listens, or it is still loading its
    data after a restart) rather than that the setup is wrong."""
    if isinstance(exc, redis.BusyLoadingError):
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, redis.ConnectionError) and (
        isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(exc)
    )


def _check_tls_files(tls: RedisTLSSettings) -> None:
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise ConfigurationError(
                f"AGENTQ_REDIS_TLS__{name.upper()}={path}: no such file; "
                "mount the certificate there or fix the setting"
            )


def describe_failure(settings: Settings, url: str, exc: Exception) -> str:
    """One line on why ``url`` failed with ``exc`` and what to do, without any password."""
    where = f"{'Redis Sentinels' if is_sentinel(url) else 'Redis'} at {mask_url(url)}"
    own = bool(urlsplit(url).password)
    password_setting = "the password in the URL" if own else "AGENTQ_REDIS_PASSWORD"
    detail = _scrub(str(exc), settings, url)
    if isinstance(exc, redis.AuthenticationError):
        if own or settings.redis_password is not None:
            return (
                f"{where} refused the password (AUTH failed): check {password_setting} "
                "(or AGENTQ_REDIS_PASSWORD_FILE)"
            )
        return (
            f"{where} requires a password (NOAUTH): set AGENTQ_REDIS_PASSWORD "
            "or AGENTQ_REDIS_PASSWORD_FILE"
        )
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        name = settings.redis_sentinel_master
        if "refused" in detail.lower():
            return f"{where}: no Sentinel answered: check the Sentinels' hosts and ports"
        return (
            f"{where}: no Sentinel knows a master named {name!r}: set "
            "AGENTQ_REDIS_SENTINEL_MASTER to the name of `sentinel monitor <name> ...`"
        )
    if "certificate verify failed" in detail.lower():
        reason = detail.partition("certificate verify failed:")[2].split("(_ssl")[0].strip()
        return (
            f"{where}: certificate verify failed ({reason or detail}): set "
            "AGENTQ_REDIS_TLS__CA_FILE to the CA that signed the server's certificate"
        )
    timeout = settings.redis_connect_timeout_s
    if isinstance(exc, redis.TimeoutError):
        if is_tls(url):
            return (
                f"{where} did not complete a TLS handshake within {timeout} s: the port may "
                "not speak TLS; use redis:// or the server's TLS port"
            )
        return f"{where} did not answer within {timeout} s: check the host, port and firewall"
    if "refused" in detail.lower():
        return f"{where} refused the connection: check that Redis runs at that host and port"
    if not is_tls(url) and any(s in detail.lower() for s in ("reset by peer", "closed")):
        return (
            f"{where} closed the connection: the server may require TLS; use rediss:// "
            "and AGENTQ_REDIS_TLS__CA_FILE"
        )
    if is_tls(url) and "ssl" in detail.lower():
        return f"{where}: TLS failed ({detail}): check the port and AGENTQ_REDIS_TLS__*"
    return f"{where} cannot be used: {detail}"


def _scrub(text: str, settings: Settings, url: str) -> str:
    """``text`` with every password it might echo masked (redis-py's messages carry none)."""
    secrets = [urlsplit(url).password]
    if settings.redis_password is not None:
        secrets.append(settings.redis_password.get_secret_value())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
