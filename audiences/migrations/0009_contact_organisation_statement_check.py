"""contact.organisation keeps its referential integrity, checked per statement instead of per row.

A foreign-key constraint runs one look-up of the organisation for every inserted contact; a 10,000-contact batch
of a bulk import paid ~10k of them at commit, a quarter of its database time. The triggers here enforce the same
rule set-based:

- INSERT (plain, COPY or MERGE): one statement-level check over the inserted rows (a transition table) that every
  organisation they name exists, locking it FOR KEY SHARE as the constraint did, so it cannot be deleted under
  the transaction.
- UPDATE of contact.organisation_id to another value: the same check for that row (nothing does this; it costs
  nothing when the column is not changed).
- DELETE of an organisation (or a change of its id) while contacts still point at it: refused at commit, as the
  deferred constraint refused it (Django's CASCADE deletes the contacts first, in the same transaction).

- TRUNCATE of the organisations while contacts remain: refused (truncating both tables together is allowed).

Violations raise SQLSTATE 23503 (foreign_key_violation), which Django reports as an IntegrityError.

Two differences from the constraint: the insert-side check runs at the end of each statement, not at commit (an
organisation must exist before its contacts are inserted; nothing here inserts in the other order), and the
commit-time check on deleting an organisation sees its transaction's snapshot, so a deleter running at REPEATABLE
READ or SERIALIZABLE could miss a contact inserted concurrently (the project runs at READ COMMITTED, where it
cannot).
"""

from django.db import migrations, models

CREATE = """
CREATE FUNCTION audiences_contact_organisation_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing audiences_contact.organisation_id%TYPE;
BEGIN
    SELECT n.organisation_id INTO missing
    FROM (SELECT DISTINCT organisation_id FROM new_contacts) AS n
    LEFT JOIN LATERAL (
        SELECT 1 AS found FROM audiences_organisation AS o WHERE o.id = n.organisation_id FOR KEY SHARE
    ) AS o ON true
    WHERE o.found IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('insert or update on table "audiences_contact" violates contact_organisation_exists: '
                             'organisation %s does not exist', COALESCE(missing::text, 'NULL')),
            TABLE = 'audiences_contact', CONSTRAINT = 'contact_organisation_exists';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER contact_organisation_exists AFTER INSERT ON audiences_contact
    REFERENCING NEW TABLE AS new_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION audiences_contact_organisation_check();

CREATE FUNCTION audiences_contact_organisation_row_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM audiences_organisation WHERE id = NEW.organisation_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('insert or update on table "audiences_contact" violates contact_organisation_exists: '
                             'organisation %s does not exist', COALESCE(NEW.organisation_id::text, 'NULL')),
            TABLE = 'audiences_contact', CONSTRAINT = 'contact_organisation_exists';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER contact_organisation_moved BEFORE UPDATE OF organisation_id ON audiences_contact
    FOR EACH ROW WHEN (OLD.organisation_id IS DISTINCT FROM NEW.organisation_id)
    EXECUTE FUNCTION audiences_contact_organisation_row_check();

CREATE FUNCTION audiences_organisation_contacts_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM audiences_contact WHERE organisation_id = OLD.id) THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('update or delete on table "audiences_organisation" violates '
                             'contact_organisation_exists: organisation %s still has contacts', OLD.id),
            TABLE = 'audiences_organisation', CONSTRAINT = 'contact_organisation_exists';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER organisation_contacts_remain AFTER DELETE OR UPDATE OF id ON audiences_organisation
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION audiences_organisation_contacts_check();

-- TRUNCATE fires no row triggers. AFTER, so that truncating both tables in one statement (as Django's test flush
-- does) is allowed, as the foreign key allowed it.
CREATE FUNCTION audiences_organisation_truncate_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audiences_contact) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'cannot truncate table "audiences_organisation": contacts still refer to it '
                      '(contact_organisation_exists)',
            TABLE = 'audiences_organisation', CONSTRAINT = 'contact_organisation_exists';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER organisation_truncate_contacts_remain AFTER TRUNCATE ON audiences_organisation
    FOR EACH STATEMENT EXECUTE FUNCTION audiences_organisation_truncate_check();
"""

DROP = """
DROP TRIGGER IF EXISTS organisation_truncate_contacts_remain ON audiences_organisation;
DROP FUNCTION IF EXISTS audiences_organisation_truncate_check();
DROP TRIGGER IF EXISTS organisation_contacts_remain ON audiences_organisation;
DROP FUNCTION IF EXISTS audiences_organisation_contacts_check();
DROP TRIGGER IF EXISTS contact_organisation_moved ON audiences_contact;
DROP FUNCTION IF EXISTS audiences_contact_organisation_row_check();
DROP TRIGGER IF EXISTS contact_organisation_exists ON audiences_contact;
DROP FUNCTION IF EXISTS audiences_contact_organisation_check();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audiences", "0008_pii_encryption"),
    ]

    operations = [
        migrations.AlterField(
            model_name="contact",
            name="organisation",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=models.deletion.CASCADE,
                related_name="contacts",
                to="audiences.organisation",
            ),
        ),
        # Going back, the triggers are dropped first, then the constraint returns.
        migrations.RunSQL(sql=CREATE, reverse_sql=DROP),
    ]
