from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def ensure_schedules(sender, **kwargs) -> None:
    """Outbound webhooks are sent every minute (schedule defined in code, corrected after migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="webhook-drain",
        defaults={"func": "integrations.outbound.outbound_drain_all", "schedule_type": Schedule.MINUTES,
                  "minutes": 1, "repeats": -1},
    )


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = _("Integrations")

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
