import uuid

import django.db.models.deletion
import django.db.models.functions.text
from django.db import migrations, models

import audiences.pii


class Migration(migrations.Migration):
    dependencies = [
        ("audiences", "0009_contact_organisation_statement_check"),
        ("delivery", "0014_run_locks"),
    ]

    operations = [
        migrations.CreateModel(
            name="SendingDomain",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("domain", models.CharField(max_length=253)),
                ("selector", models.CharField(max_length=63)),
                ("private_key", audiences.pii.EncryptedTextField(help_text="PKCS#8 PEM, encrypted at rest.")),
                ("public_key", models.TextField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("key_created_at", models.DateTimeField()),
                (
                    "check_status",
                    models.CharField(
                        choices=[
                            ("unchecked", "Not checked yet"),
                            ("verified", "Verified"),
                            ("mismatch", "Published key differs"),
                            ("missing", "No record published"),
                            ("error", "Check failed"),
                        ],
                        default="unchecked",
                        max_length=16,
                    ),
                ),
                ("check_message", models.CharField(blank=True, default="", max_length=500)),
                ("checked_at", models.DateTimeField(blank=True, null=True)),
                (
                    "organisation",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="sending_domains",
                        to="audiences.organisation",
                    ),
                ),
            ],
            options={
                "ordering": ["domain"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("organisation", "domain"), name="sending_domain_unique_per_organisation"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("domain", django.db.models.functions.text.Lower("domain"))),
                        name="sending_domain_lowercase",
                    ),
                ],
            },
        ),
    ]
