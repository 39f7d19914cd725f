# Revenue per recipient (analytics.experiments) reads only a campaign's conversions; built concurrently so a large
# engagement table keeps taking writes meanwhile.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("analytics", "0004_experiment_decisions"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="engagementevent",
            index=models.Index(
                condition=models.Q(("kind", "conversion")),
                fields=["campaign_id", "message_id"],
                name="engagement_conversion_idx",
            ),
        ),
    ]
