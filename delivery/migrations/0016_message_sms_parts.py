from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("delivery", "0015_sending_domains")]

    operations = [
        # Nullable without a default: adding it rewrites no rows, and fan-out's INSERTs leave it NULL.
        migrations.AddField(
            model_name="message",
            name="parts",
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
    ]
