from django.db import migrations

# Suppression addresses are encrypted now (audiences.pii), so a trigger cannot quote them in the audit log:
# delivery.receipts writes the audit entries of receipt suppressions itself, in the same statement.
DROP = """
DROP TRIGGER IF EXISTS cs_audit_auto_suppression ON compliance_suppression;
DROP FUNCTION IF EXISTS cs_audit_auto_suppression();
DROP FUNCTION IF EXISTS cs_address_hash(text, bytea, bytea);
"""


class Migration(migrations.Migration):
    dependencies = [("compliance", "0008_suppression_encrypted")]

    operations = [migrations.RunSQL(DROP, migrations.RunSQL.noop)]
