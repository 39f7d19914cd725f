from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0012_schedule_alarms")]

    operations: list = []
