# Placeholder kept in the chain so parallel work stays linear; the auto-winner fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0018_run_waiting")]

    operations: list[migrations.operations.base.Operation] = []
