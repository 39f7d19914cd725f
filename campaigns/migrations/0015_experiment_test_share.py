# The auto-winner's test share: its percentage, window, decision mode and fallback (analytics.autowinner).
import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0014_sticky_variants")]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="experiment_decide",
            field=models.CharField(
                choices=[
                    ("sequential", "As soon as a winner is significant (sequential test)"),
                    ("window_end", "At the end of the window (one look)"),
                ],
                default="sequential",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="campaign",
            name="experiment_fallback",
            field=models.CharField(
                choices=[("best_observed", "The best observed variant"), ("variant", "A chosen variant")],
                default="best_observed",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="campaign",
            name="experiment_fallback_variant",
            field=models.CharField(
                blank=True, default="", help_text="The chosen variant's name (fallback 'variant').", max_length=100
            ),
        ),
        migrations.AddField(
            model_name="campaign",
            name="experiment_test_percent",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="0 (no test share) to 90 % of the audience.",
                validators=[django.core.validators.MaxValueValidator(90)],
            ),
        ),
        migrations.AddField(
            model_name="campaign",
            name="experiment_window_hours",
            field=models.PositiveSmallIntegerField(
                default=4,
                help_text="1 to 720 hours.",
                validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(720)],
            ),
        ),
        migrations.AddField(
            model_name="historicalcampaign",
            name="experiment_decide",
            field=models.CharField(
                choices=[
                    ("sequential", "As soon as a winner is significant (sequential test)"),
                    ("window_end", "At the end of the window (one look)"),
                ],
                default="sequential",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="historicalcampaign",
            name="experiment_fallback",
            field=models.CharField(
                choices=[("best_observed", "The best observed variant"), ("variant", "A chosen variant")],
                default="best_observed",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="historicalcampaign",
            name="experiment_fallback_variant",
            field=models.CharField(
                blank=True, default="", help_text="The chosen variant's name (fallback 'variant').", max_length=100
            ),
        ),
        migrations.AddField(
            model_name="historicalcampaign",
            name="experiment_test_percent",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="0 (no test share) to 90 % of the audience.",
                validators=[django.core.validators.MaxValueValidator(90)],
            ),
        ),
        migrations.AddField(
            model_name="historicalcampaign",
            name="experiment_window_hours",
            field=models.PositiveSmallIntegerField(
                default=4,
                help_text="1 to 720 hours.",
                validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(720)],
            ),
        ),
        migrations.AddConstraint(
            model_name="campaign",
            constraint=models.CheckConstraint(
                condition=models.Q(("experiment_test_percent__lte", 90)), name="campaign_experiment_test_percent_range"
            ),
        ),
    ]
