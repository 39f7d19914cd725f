# The organisation's global control group (audiences.models.Organisation.global_control_percent).
import django.core.validators
from django.db import migrations, models


def _field() -> models.DecimalField:
    return models.DecimalField(
        decimal_places=2,
        default=0,
        help_text="Share of contacts (0-20 %) who receive no marketing campaign. 0: off.",
        max_digits=4,
        validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(20)],
    )


class Migration(migrations.Migration):
    dependencies = [("audiences", "0010_organisation_currency")]

    operations: list[migrations.operations.base.Operation] = [
        migrations.AddField(model_name="historicalorganisation", name="global_control_percent", field=_field()),
        migrations.AddField(model_name="organisation", name="global_control_percent", field=_field()),
        migrations.AddConstraint(
            model_name="organisation",
            constraint=models.CheckConstraint(
                condition=models.Q(("global_control_percent__gte", 0), ("global_control_percent__lte", 20)),
                name="organisation_global_control_range",
            ),
        ),
    ]
