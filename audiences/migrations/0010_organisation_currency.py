# The currency an organisation reports revenue in (ISO 4217), shown beside every amount.
from django.db import migrations, models

import audiences.currencies


class Migration(migrations.Migration):
    dependencies = [("audiences", "0009_contact_organisation_statement_check")]

    operations = [
        migrations.AddField(
            model_name="organisation",
            name="currency",
            field=models.CharField(
                db_default="USD",
                default="USD",
                help_text="ISO 4217 code of the currency conversion values are in, e.g. USD, EUR, GBP.",
                max_length=3,
                validators=[audiences.currencies.validate_currency],
            ),
        ),
        migrations.AddField(
            model_name="historicalorganisation",
            name="currency",
            field=models.CharField(
                db_default="USD",
                default="USD",
                help_text="ISO 4217 code of the currency conversion values are in, e.g. USD, EUR, GBP.",
                max_length=3,
                validators=[audiences.currencies.validate_currency],
            ),
        ),
    ]
