# Placeholder kept in the chain so parallel work stays linear; the provider role fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audiences", "0011_global_control")]

    operations: list[migrations.operations.base.Operation] = []
