from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0010_sticky_variants")]

    operations: list = []
