"""Django's system checks pass: a worker or web process refuses to start otherwise."""

from django.core.management import call_command


def test_system_checks_pass(db):
    call_command("check", fail_level="WARNING")
