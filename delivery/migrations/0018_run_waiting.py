"""A run waiting for its audience service (intelligent_query) at its start: since when, when it tries again, and
how many times it has tried (the backoff)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("delivery", "0017_scheduled_engagement")]

    operations: list[migrations.operations.base.Operation] = [
        migrations.AddField(model_name="run", name="waiting_since", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(model_name="run", name="retry_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(
            model_name="run",
            name="wait_attempts",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
