from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0011_send_windows")]

    operations: list = []
