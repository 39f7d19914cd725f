# Placeholder kept in the chain so parallel work stays linear; the global control group fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("analytics", "0006_attribution")]

    operations: list[migrations.operations.base.Operation] = []
