"""An external segment may reference one of intelligent_query's pre-built segments (external_segment_id), once per
organisation, resolved when it is used."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audiences", "0012_provider_role")]

    operations: list[migrations.operations.base.Operation] = [
        migrations.AddField(
            model_name="historicalsegment",
            name="external_segment_id",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.AddField(
            model_name="segment",
            name="external_segment_id",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.AddConstraint(
            model_name="segment",
            constraint=models.UniqueConstraint(
                condition=models.Q(("external_segment_id", ""), _negated=True),
                fields=("organisation", "external_segment_id"),
                name="segment_unique_prebuilt",
            ),
        ),
    ]
