from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def ensure_schedules(sender, **kwargs) -> None:
    """The daily-run dispatcher, defined in code, created or corrected after every migrate.

    It runs every 15 minutes and starts each store's run once its local hour has come
    (``Store.daily_run_hour``); the tag sync is one of the run's steps, so the old
    ``daily-tag-sync`` schedule is removed.
    """
    from django_q.models import Schedule

    Schedule.objects.filter(name="daily-tag-sync").delete()
    Schedule.objects.update_or_create(
        name="daily-run-dispatch",
        defaults={"func": "metrics.pipeline.daily_dispatch", "schedule_type": Schedule.MINUTES, "minutes": 15,
                  "repeats": -1},
    )


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = _("Metrics")

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
