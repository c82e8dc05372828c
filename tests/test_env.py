import pytest
from django.core.exceptions import ImproperlyConfigured

from ecpower import env


def test_env_bool_rejects_words_that_are_not_booleans(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "sure")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='sure' is not a boolean"):
        env.env_bool("SOME_FLAG", False)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("True", True), ("off", False), ("", True)])
def test_env_bool_reads_common_spellings_and_defaults_when_empty(monkeypatch, raw, expected):
    monkeypatch.setenv("SOME_FLAG", raw)
    assert env.env_bool("SOME_FLAG", True) is expected


def test_env_int_names_the_variable_on_garbage(monkeypatch):
    monkeypatch.setenv("WORKERS", "two")
    with pytest.raises(ImproperlyConfigured, match="WORKERS='two' is not an integer"):
        env.env_int("WORKERS", 1)


def test_env_str_without_default_is_required(monkeypatch):
    monkeypatch.delenv("NEEDED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="NEEDED is required"):
        env.env_str("NEEDED")


def test_env_secret_prefers_the_file_variable(monkeypatch, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("TOKEN", "from-env")
    monkeypatch.setenv("TOKEN_FILE", str(secret_file))
    assert env.env_secret("TOKEN") == "from-file"


def test_env_list_splits_and_trims(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example, b.example ,,")
    assert env.env_list("HOSTS", []) == ["a.example", "b.example"]


def test_settings_refuse_to_start_without_secret_key_when_debug_is_off(tmp_path):
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DJANGO_DEBUG")}
    environment["DJANGO_SETTINGS_MODULE"] = "ecpower.settings"
    environment["ECPOWER_ENV_FILE"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=environment,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required when DJANGO_DEBUG is off" in result.stderr


def test_env_file_fills_only_what_the_environment_lacks(monkeypatch, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# local development\nDJANGO_DEBUG=1\nLOG_LEVEL='DEBUG'\n\n")
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    env.load_env_file(env_file)
    assert env.env_bool("DJANGO_DEBUG", False) is True
    assert env.env_str("LOG_LEVEL") == "WARNING"


def test_env_file_with_a_broken_line_names_it(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DJANGO_DEBUG=1\njust words\n")
    with pytest.raises(ImproperlyConfigured, match=r"\.env, line 2: expected KEY=VALUE"):
        env.load_env_file(env_file)
