# A run's phase: the auto-winner's test share, then the winner to the rest of the audience (analytics.autowinner).
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("delivery", "0018_run_waiting")]

    operations = [
        migrations.AddField(
            model_name="run",
            name="phase",
            field=models.CharField(
                blank=True,
                choices=[("", "Whole audience"), ("test", "Test share"), ("winner", "Winner to the rest")],
                db_default="",
                default="",
                max_length=8,
            ),
        ),
        migrations.AddConstraint(
            model_name="run",
            constraint=models.UniqueConstraint(
                condition=models.Q(("phase", "winner")), fields=("campaign",), name="run_unique_winner"
            ),
        ),
    ]
