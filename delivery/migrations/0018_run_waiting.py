# Placeholder kept in the chain so parallel work stays linear; the adapters fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0017_scheduled_engagement")]

    operations: list[migrations.operations.base.Operation] = []
