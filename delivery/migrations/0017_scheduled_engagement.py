# Engagement a provider reports for later (the sandbox's simulated people), recorded when its time comes:
# delivery.models.ScheduledEngagement, read by delivery.sandbox.scheduled_engagement_record_due.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("delivery", "0016_message_sms_parts")]

    operations: list[migrations.operations.base.Operation] = [
        migrations.CreateModel(
            name="ScheduledEngagement",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("message_id", models.BigIntegerField()),
                ("kind", models.CharField(max_length=16)),
                ("due_at", models.DateTimeField()),
                ("is_machine", models.BooleanField(default=False)),
                ("value", models.DecimalField(blank=True, decimal_places=2, max_digits=12, null=True)),
                ("dedupe_key", models.CharField(max_length=160, unique=True)),
            ],
            options={"indexes": [models.Index(fields=["due_at"], name="scheduled_engagement_due_idx")]},
        ),
    ]
