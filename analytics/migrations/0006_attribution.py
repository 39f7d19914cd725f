# Placeholder kept in the chain so parallel work stays linear; attribution & reports fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("analytics", "0005_conversion_index")]

    operations: list[migrations.operations.base.Operation] = []
