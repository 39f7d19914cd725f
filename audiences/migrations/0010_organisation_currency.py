# Placeholder kept in the chain so parallel work stays linear; attribution & reports fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audiences", "0009_contact_organisation_statement_check")]

    operations: list[migrations.operations.base.Operation] = []
