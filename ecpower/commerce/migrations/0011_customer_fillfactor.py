# Customer pages keep a tenth free, so the facts refresh updates a customer's row in place (a HOT
# update: no new entry in any of the table's four indexes). At 1M customers, 10,000 customers' facts
# took 0.58-0.87 s this way against 0.78-1.13 s with full pages (docs/performance.md). Existing pages
# take the setting when they are next rewritten (VACUUM FULL, or as rows move).

from django.db import migrations

FILLFACTOR = 90


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE commerce_customer SET (fillfactor = {FILLFACTOR})")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE commerce_customer RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ("commerce", "0010_foreign_key_indexes_served_by_composites"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
