# Placeholder kept in the chain so parallel work stays linear; sandbox engagement over time fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0016_message_sms_parts")]

    operations: list[migrations.operations.base.Operation] = []
