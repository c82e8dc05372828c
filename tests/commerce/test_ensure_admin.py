from django.contrib.auth import get_user_model
from django.core.management import call_command


def test_ensure_admin_takes_the_password_from_the_environment_once(db, monkeypatch, capsys):
    monkeypatch.setenv("ECPOWER_ADMIN_PASSWORD", "s3cret-pass")
    call_command("ensure_admin", "--username", "boss")
    user = get_user_model().objects.get(username="boss")
    assert user.is_superuser and user.check_password("s3cret-pass")
    assert "s3cret-pass" not in capsys.readouterr().out
    monkeypatch.setenv("ECPOWER_ADMIN_PASSWORD", "other")
    call_command("ensure_admin", "--username", "boss")
    user.refresh_from_db()
    assert user.check_password("s3cret-pass")  # never reset behind the operator's back


def test_ensure_admin_prints_a_generated_password(db, monkeypatch, capsys):
    monkeypatch.delenv("ECPOWER_ADMIN_PASSWORD", raising=False)
    call_command("ensure_admin")
    password = capsys.readouterr().out.rsplit("password: ", 1)[1].strip()
    assert get_user_model().objects.get(username="admin").check_password(password)
