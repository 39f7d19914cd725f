from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0015_sending_domains")]

    operations: list = []
