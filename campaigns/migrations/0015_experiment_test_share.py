# Placeholder kept in the chain so parallel work stays linear; the auto-winner fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0014_sticky_variants")]

    operations: list[migrations.operations.base.Operation] = []
