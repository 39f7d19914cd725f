# Where an audited change came from: the client's address (its real one behind a trusted proxy). The login limit
# (audiences.login_limit) records lockouts with it; every request-driven change now carries it.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("compliance", "0010_unsubscribe_by_mail")]

    operations = [
        migrations.AddField(
            model_name="auditlogentry",
            name="ip_address",
            field=models.GenericIPAddressField(blank=True, null=True),
        ),
    ]
