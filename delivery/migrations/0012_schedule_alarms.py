"""Schedule alarms rebuilt one per waiting campaign.

Older versions shared ClockedSchedule (and CrontabSchedule) rows between campaigns of any organisation, created
them with get_or_create — so campaigns scheduled for one instant at the same time left duplicates, and every later
schedule for that instant failed — and never removed them; recurring campaigns had crontab alarms, which celery-beat
reads differently from standard cron. This deletes every campaign alarm with the schedule rows no remaining task
uses, then gives each campaign that waits for an occurrence its own one-off clocked alarm (delivery.task_service).
"""

import json

from django.db import migrations
from django.utils import timezone

ALARM_PREFIX = "campaign-schedule:"
FIRE_TASK = "delivery.tasks.campaign_schedule_fire_task"


def rebuild_alarms(apps, schema_editor):
    ClockedSchedule = apps.get_model("django_celery_beat", "ClockedSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    Campaign = apps.get_model("campaigns", "Campaign")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_celery_beat_periodictask WHERE name LIKE %s", [ALARM_PREFIX + "%"])
        for table, column in (("clockedschedule", "clocked_id"), ("crontabschedule", "crontab_id")):
            cursor.execute(
                f"DELETE FROM django_celery_beat_{table} s WHERE NOT EXISTS"  # noqa: S608 - constant names
                f" (SELECT 1 FROM django_celery_beat_periodictask t WHERE t.{column} = s.id)"
            )
    waiting = list(
        Campaign.objects.filter(status="scheduled", deleted_at__isnull=True, scheduled_at__isnull=False).values_list(
            "pk", "name", "scheduled_at"
        )
    )
    clocks = ClockedSchedule.objects.bulk_create(ClockedSchedule(clocked_time=at) for _, _, at in waiting)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"{ALARM_PREFIX}{pk}",
            task=FIRE_TASK,
            args=json.dumps([str(pk)]),
            clocked=clock,
            one_off=True,
            enabled=True,
            description=f"Starts campaign {name[:150]!r}",
        )
        for (pk, name, _), clock in zip(waiting, clocks, strict=True)
    )
    # celery-beat reloads its schedule when this marker moves.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0011_send_windows"),
        ("campaigns", "0014_sticky_variants"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(rebuild_alarms, migrations.RunPython.noop)]
