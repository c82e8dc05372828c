from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin superuser if missing. Password from ECPOWER_ADMIN_PASSWORD, else generated and printed."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@example.jp")

    def handle(self, *args, **options):
        users = get_user_model()
        if users.objects.filter(username=options["username"]).exists():
            self.stdout.write(f"Admin user {options['username']!r} exists; its password is unchanged.")
            return
        password = os.environ.get("ECPOWER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser(options["username"], options["email"], password)
        shown = "(from ECPOWER_ADMIN_PASSWORD)" if os.environ.get("ECPOWER_ADMIN_PASSWORD") else password
        self.stdout.write(self.style.SUCCESS(f"Admin user {options['username']!r} created, password: {shown}"))
