"""Membership is keyed by (segment, customer) instead of a surrogate id.

The unique (segment, customer) index was already the one every query uses; the id added a second index
and a sequence value to every row written. At 1M customers a first recompute of the 20 benchmark segments
took 47.5–50.3 s with it and 42.9–45.3 s without (docs/performance.md).

Django does not migrate a table to a composite primary key itself, so the database is changed here by
hand: on PostgreSQL in place (the unique index's name stays, now the primary key's), on SQLite by
rebuilding the table from the new model.
"""

from django.db import migrations, models

COLUMNS = "store_id, segment_id, customer_id, since, holdout"


def to_composite_key(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE segments_membership DROP CONSTRAINT membership_unique")
        schema_editor.execute("ALTER TABLE segments_membership DROP COLUMN id")
        schema_editor.execute(
            "ALTER TABLE segments_membership ADD CONSTRAINT membership_unique PRIMARY KEY (segment_id, customer_id)")
        return
    schema_editor.execute("ALTER TABLE segments_membership RENAME TO segments_membership_old")
    schema_editor.create_model(apps.get_model("segments", "Membership"))
    schema_editor.execute(f"INSERT INTO segments_membership ({COLUMNS}) SELECT {COLUMNS} FROM segments_membership_old")
    schema_editor.execute("DROP TABLE segments_membership_old")


class Migration(migrations.Migration):

    dependencies = [
        ("segments", "0006_membership_indexes_by_segment"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name="membership", name="membership_unique"),
                migrations.RemoveField(model_name="membership", name="id"),
                migrations.AddField(
                    model_name="membership",
                    name="pk",
                    field=models.CompositePrimaryKey(
                        "segment", "customer", blank=True, editable=False, primary_key=True, serialize=False),
                ),
            ],
        ),
        migrations.RunPython(to_composite_key, migrations.RunPython.noop, elidable=False),
    ]
