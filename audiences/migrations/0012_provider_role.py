# The provider role: API keys that post receipts and inbound messages and read in-app inboxes, nothing else.
from django.db import migrations, models

API_KEY_ROLES = [
    ("admin", "Admin"),
    ("marketer", "Marketer"),
    ("analyst", "Analyst"),
    ("compliance", "Compliance officer"),
    ("provider", "Provider (receipts, inbound, inbox)"),
]


class Migration(migrations.Migration):
    dependencies = [("audiences", "0011_global_control")]

    operations = [
        migrations.AlterField(
            model_name="apikey",
            name="role",
            field=models.CharField(choices=API_KEY_ROLES, default="marketer", max_length=20),
        ),
        migrations.AlterField(
            model_name="historicalapikey",
            name="role",
            field=models.CharField(choices=API_KEY_ROLES, default="marketer", max_length=20),
        ),
    ]
