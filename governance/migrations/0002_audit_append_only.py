"""The database itself refuses UPDATE, DELETE and TRUNCATE on the audit tables.

PostgreSQL: row triggers for UPDATE/DELETE and a statement trigger for TRUNCATE, ENABLE ALWAYS
so that `session_replication_role = replica` does not skip them; PUBLIC gets nothing. The app
role is granted SELECT, INSERT only by `manage.py grant_app_role`. SQLite: equivalent triggers.
"""

from django.db import migrations

TABLES = ("governance_auditevent", "governance_auditcheckpoint")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION ringfence_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ringfence audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;
"""


def forwards(apps, schema_editor):
    conn = schema_editor.connection
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute(PG_FUNCTION)
            for table in TABLES:
                cursor.execute(f"REVOKE ALL ON {table} FROM PUBLIC")
                cursor.execute(f"CREATE TRIGGER {table}_no_mod BEFORE UPDATE OR DELETE ON {table} "
                               "FOR EACH ROW EXECUTE FUNCTION ringfence_audit_refuse()")
                cursor.execute(f"CREATE TRIGGER {table}_no_trunc BEFORE TRUNCATE ON {table} "
                               "FOR EACH STATEMENT EXECUTE FUNCTION ringfence_audit_refuse()")
                cursor.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_mod")
                cursor.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_trunc")
        elif conn.vendor == "sqlite":
            for table in TABLES:
                for op in ("UPDATE", "DELETE"):
                    cursor.execute(
                        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, 'ringfence audit trail is append-only: {op} refused'); END"
                    )


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
