from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0013_engine_wake")]

    operations: list = []
