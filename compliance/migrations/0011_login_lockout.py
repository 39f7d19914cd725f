# Placeholder kept in the chain so parallel work stays linear; the login limit fills in its operations.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("compliance", "0010_unsubscribe_by_mail")]

    operations: list[migrations.operations.base.Operation] = []
