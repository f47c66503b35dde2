"""One address per peer, each from its own variable; the Redis password masked and found in the state folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from cxr_triage.redis_client import open_async_redis, open_redis
from cxr_triage.settings import Address, Settings, parse_host_port


def test_defaults_are_the_local_stack_on_loopback(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert s.redis_url == "redis://127.0.0.1:16379/0"
    assert s.triton_grpc_url == "127.0.0.1:18001"
    assert s.triton_http_url == "http://127.0.0.1:18000"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:15000"
    assert s.bind_host == s.kafka_listen_host == "127.0.0.1"
    assert s.api_url == "http://127.0.0.1:8000"


def test_each_peer_has_its_own_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_KAFKA_BOOTSTRAP_SERVERS", " kafka-a:9092, kafka-b:9093 ")
    monkeypatch.setenv("CXR_REDIS_URL", "rediss://cache.internal:6380/2")
    monkeypatch.setenv("CXR_TRITON_GRPC_URL", "triton:8001")
    monkeypatch.setenv("CXR_TRITON_HTTP_URL", "http://triton:8000/")
    monkeypatch.setenv("CXR_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("CXR_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("CXR_KAFKA_LISTEN_HOST", "0.0.0.0")
    s = Settings(home=tmp_path)
    assert s.kafka_bootstrap_servers == "kafka-a:9092,kafka-b:9093"
    assert s.kafka_address == Address("kafka-a", 9092)
    assert s.redis_address == Address("cache.internal", 6380)
    assert s.triton_grpc_address == Address("triton", 8001)
    assert s.triton_http_url == "http://triton:8000"
    assert s.triton_http_address == Address("triton", 8000)
    assert s.mlflow_address == Address("mlflow", 5000)
    assert s.bind_host == s.kafka_listen_host == "0.0.0.0"
    assert s.local_url(9108) == "http://127.0.0.1:9108", "a wildcard bind is reached on loopback"


def test_scheme_default_ports_and_ipv6(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, redis_url="redis://cache/0", triton_http_url="https://triton")
    assert s.redis_address == Address("cache", 6379)
    assert s.triton_http_address == Address("triton", 443)
    assert parse_host_port("[::1]:19092") == Address("::1", 19092)
    assert Address("::1", 19092).netloc == "[::1]:19092"
    assert Settings(home=tmp_path, bind_host="::").api_url == "http://[::1]:8000"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kafka_bootstrap_servers", "kafka"),
        ("kafka_bootstrap_servers", " , "),
        ("kafka_bootstrap_servers", "kafka:port"),
        ("redis_url", "127.0.0.1:6379"),
        ("redis_url", "http://127.0.0.1:6379"),
        ("triton_grpc_url", "grpc://triton:8001"),
        ("triton_http_url", "triton:8000"),
    ],
)
def test_an_address_that_does_not_parse_is_refused_at_start(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings.model_validate({"home": tmp_path, name: value})


def test_a_file_tracking_uri_is_allowed_but_names_no_server(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, mlflow_tracking_uri=f"file://{tmp_path}/mlruns")
    with pytest.raises(ValueError, match="no host and port"):
        _ = s.mlflow_address


def test_the_password_is_masked_in_repr_and_dumps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_REDIS_PASSWORD", "hunter2-very-secret")
    s = Settings(home=tmp_path)
    assert isinstance(s.redis_password, SecretStr)
    assert s.redis_password.get_secret_value() == "hunter2-very-secret"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "hunter2" not in text
    assert s.redis_auth() == SecretStr("hunter2-very-secret")


def test_the_password_comes_from_the_state_folder_when_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CXR_REDIS_PASSWORD", raising=False)
    s = Settings(home=tmp_path)
    assert s.redis_auth() is None, "no variable, no file: no AUTH"
    s.redis_password_file.parent.mkdir()
    s.redis_password_file.write_text("from-the-file\n")
    assert s.redis_password is None
    auth = s.redis_auth()
    assert auth is not None and auth.get_secret_value() == "from-the-file"
    assert "from-the-file" not in repr(s)
    monkeypatch.setenv("CXR_REDIS_PASSWORD", "explicit")
    explicit = Settings(home=tmp_path).redis_auth()
    assert explicit is not None and explicit.get_secret_value() == "explicit", "the variable wins"
    monkeypatch.setenv("CXR_REDIS_PASSWORD", "")
    assert Settings(home=tmp_path).redis_password is None, "empty means unset"


def test_clients_carry_the_url_and_the_password(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, redis_url="redis://cache.internal:6380/3", redis_password="pw")
    for client in (open_redis(s), open_async_redis(s)):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 3)
        assert kwargs["password"] == "pw"
    bare = open_redis(Settings(home=tmp_path))
    assert bare.connection_pool.connection_kwargs.get("password") is None


def test_replaced_port_settings_are_refused_with_their_successor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="CXR_REDIS_PORT: use CXR_REDIS_URL"):
        Settings.model_validate({"home": tmp_path, "redis_port": 1})
    monkeypatch.setenv("CXR_HOST", "10.0.0.5")
    with pytest.raises(ValidationError, match="CXR_HOST: use CXR_KAFKA_BOOTSTRAP_SERVERS"):
        Settings(home=tmp_path)


def test_a_refused_setting_does_not_echo_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CXR_REDIS_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("CXR_REDIS_PORT", "6379")
    with pytest.raises(ValidationError) as refused:
        Settings(home=tmp_path)
    assert "hunter2" not in str(refused.value)
    monkeypatch.delenv("CXR_REDIS_PORT")
    with pytest.raises(ValidationError, match="redis_url") as bad_url:
        Settings(home=tmp_path, redis_url="http://:hunter2@cache:6379")
    assert "hunter2" not in str(bad_url.value)


@pytest.mark.parametrize("title", ["", "A" * 17, "A\\B", "   ", "ÄRZTE"])
def test_bad_dicom_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(ValueError, match="AE title is 1 to 16 printable ASCII"):
        Settings(dicom_ae_title=title)


def test_an_ae_title_keeps_its_text_without_padding() -> None:
    assert Settings(dicom_ae_title=" PACS_GW ").dicom_ae_title == "PACS_GW"
