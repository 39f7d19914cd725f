# Placeholder kept in the chain so parallel work stays linear; the global control group fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audiences", "0010_organisation_currency")]

    operations: list[migrations.operations.base.Operation] = []
