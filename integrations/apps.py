from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def ensure_schedules(sender, **kwargs) -> None:
    """The daily tag sync of condition segments, defined in code, created or corrected after migrate."""
    import datetime as dt

    from django.utils import timezone
    from django_q.models import Schedule

    local = timezone.localtime()
    next_run = local.replace(hour=5, minute=0, second=0, microsecond=0)
    if next_run <= local:
        next_run += dt.timedelta(days=1)
    Schedule.objects.update_or_create(
        name="daily-tag-sync",
        defaults={"func": "integrations.jobs.daily_tag_sync", "schedule_type": Schedule.DAILY, "repeats": -1},
        create_defaults={"func": "integrations.jobs.daily_tag_sync", "schedule_type": Schedule.DAILY,
                         "repeats": -1, "next_run": next_run},
    )


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = _("Integrations")

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
