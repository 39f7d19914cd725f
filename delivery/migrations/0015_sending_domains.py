from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0014_run_locks")]

    operations: list = []
