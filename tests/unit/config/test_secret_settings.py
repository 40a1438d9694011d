"""Secrets in settings: read from files named by the environment, masked wherever shown."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.config import (
    RedisTLSSettings,
    ReplicaSettings,
    Settings,
    mask_url,
    secret_file_var,
    settings_env,
)
from app.errors import ConfigurationError
from app.ops.redis_clients import celery_redis_options, client_options

SECRET = "s3cr3t-Value_42"


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "secret"
    path.write_text(text)
    return str(path)


def test_secret_file_vars_follow_the_field_names() -> None:
    assert secret_file_var("redis_password") == "AGENTQ_REDIS_PASSWORD_FILE"
    assert secret_file_var("openai.api_key") == "AGENTQ_OPENAI__API_KEY_FILE"
    assert secret_file_var("flower.basic_auth") == "AGENTQ_FLOWER__BASIC_AUTH_FILE"


def test_the_redis_password_comes_from_its_file_without_the_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_REDIS_PASSWORD_FILE", _file(tmp_path, SECRET + "\n"))
    assert Settings(_env_file=None).redis_password == SecretStr(SECRET)


def test_a_nested_secret_file_merges_with_the_rest_of_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_OPENAI__API_KEY_FILE", _file(tmp_path, SECRET + "\r\n"))
    monkeypatch.setenv("AGENTQ_OPENAI__MODEL", "nim-llama")
    openai = Settings(_env_file=None).openai
    assert openai.api_key == SecretStr(SECRET)
    assert openai.model == "nim-llama"


def test_flower_credentials_may_come_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_FLOWER__BASIC_AUTH_FILE", _file(tmp_path, f"ops:{SECRET}\n"))
    monkeypatch.setenv("AGENTQ_FLOWER__PORT", "5600")
    flower = Settings(_env_file=None).flower
    assert flower.basic_auth == SecretStr(f"ops:{SECRET}")
    assert flower.port == 5600


def test_url_secrets_may_come_from_files(tmp_path, monkeypatch):
    url = f"postgresql+psycopg://agentq:{SECRET}@db/agentq"
    monkeypatch.setenv("AGENTQ_DATABASE_URL_FILE", _file(tmp_path, url + "\n"))
    assert Settings(_env_file=None).database_url == url


def test_the_variable_itself_wins_over_its_file(tmp_path, monkeypatch):
    # A child process gets AGENTQ_REDIS_PASSWORD from settings_env and may inherit _FILE.
    monkeypatch.setenv("AGENTQ_REDIS_PASSWORD_FILE", _file(tmp_path, "from-file"))
    monkeypatch.setenv("AGENTQ_REDIS_PASSWORD", "from-env")
    assert Settings(_env_file=None).redis_password == SecretStr("from-env")


def test_a_missing_secret_file_is_a_configuration_error(tmp_path, monkeypatch):
    missing = tmp_path / "not-mounted"
    monkeypatch.setenv("AGENTQ_REDIS_PASSWORD_FILE", str(missing))
    with pytest.raises(ConfigurationError, match=r"AGENTQ_REDIS_PASSWORD_FILE=.*not-mounted"):
        Settings(_env_file=None)


def test_repr_masks_every_secret() -> None:
    settings = Settings(
        _env_file=None,
        redis_url=f"rediss://:{SECRET}@redis:6380/0",
        result_backend=f"redis://user:{SECRET}@other:6379/1",
        database_url=f"postgresql+psycopg://agentq:{SECRET}@db/agentq",
        redis_password=SecretStr(SECRET),
        openai={"api_key": SECRET},
    )
    for text in (repr(settings), str(settings)):
        assert SECRET not in text
        assert "rediss://:***@redis:6380/0" in text
        assert "postgresql+psycopg://agentq:***@db/agentq" in text


def test_a_rejected_setting_does_not_echo_its_value() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, redis_url=f"http://:{SECRET}@redis/0", openai={"api_key": 5})
    assert "redis_url" in str(info.value) and "openai.api_key" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:///agentq.sqlite3", "sqlite:///agentq.sqlite3"),
        ("sentinel://:pw@a:1;sentinel://:pw@b:2/0", "sentinel://:***@a:1;sentinel://:***@b:2/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_settings_env_hands_children_the_password_and_tls(tmp_path, monkeypatch):
    tls = RedisTLSSettings(ca_file=tmp_path / "ca.pem", verify=True)
    parent = Settings(
        _env_file=None,
        redis_url="rediss://127.0.0.1:6380/0",
        redis_password=SecretStr(SECRET),
        redis_tls=tls,
    )
    for name, value in settings_env(parent).items():
        monkeypatch.setenv(name, value)
    child = Settings(_env_file=None)
    assert child.redis_password == SecretStr(SECRET)
    assert child.redis_tls == tls
    assert child.broker == "rediss://127.0.0.1:6380/0"


def test_clients_get_the_password_and_tls_unless_the_url_says_otherwise(tmp_path):
    settings = Settings(
        _env_file=None,
        redis_password=SecretStr(SECRET),
        redis_tls=RedisTLSSettings(ca_file=tmp_path / "ca.pem"),
    )
    tls = client_options(settings, "rediss://127.0.0.1:6380/0")
    assert tls["password"] == SECRET
    assert tls["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert tls["ssl_cert_reqs"] == ssl.CERT_REQUIRED and tls["ssl_check_hostname"] is True
    plain = client_options(settings, "redis://127.0.0.1:6379/0")
    assert not any(key.startswith("ssl") for key in plain)
    assert "password" not in client_options(settings, "redis://:own@127.0.0.1:6379/0")


def test_celery_gets_the_password_outside_its_urls_and_tls_for_rediss(tmp_path):
    settings = Settings(
        _env_file=None,
        redis_url="rediss://127.0.0.1:6380/0",
        result_backend="redis://127.0.0.1:6379/1",
        redis_password=SecretStr(SECRET),
        redis_tls=RedisTLSSettings(ca_file=tmp_path / "ca.pem", verify=False),
    )
    conf = celery_redis_options(settings)
    assert conf["broker_password"] == conf["redis_password"] == SECRET
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_NONE
    assert "redis_backend_use_ssl" not in conf  # the backend's URL is plain redis://


def test_settings_env_hands_children_how_the_models_are_spoken_to(monkeypatch):
    folder = "/var/tmp/smollm2"
    served = {"ensemble": folder, "ensemble_stream": folder}
    parent = Settings(_env_file=None)
    parent = parent.model_copy(
        update={
            "triton": parent.triton.model_copy(
                update={"chat_templates": served, "tokenizers": served, "guided_decoding": False}
            ),
            "openai": parent.openai.model_copy(
                update={
                    "replicas": [ReplicaSettings(url="http://127.0.0.1:1/v1")],
                    "tokenizers": served,
                    "timeout_s": 240.0,
                }
            ),
        }
    )
    for name, value in settings_env(parent).items():
        monkeypatch.setenv(name, value)
    child = Settings(_env_file=None)
    assert child.triton.chat_templates == served and child.triton.tokenizers == served
    assert child.triton.guided_decoding is False
    assert child.openai.tokenizers == served and child.openai.timeout_s == 240.0
