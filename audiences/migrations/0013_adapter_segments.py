# Placeholder kept in the chain so parallel work stays linear; the adapters fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audiences", "0012_provider_role")]

    operations: list[migrations.operations.base.Operation] = []
