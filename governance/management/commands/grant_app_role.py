from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

AUDIT_TABLES = ("governance_auditevent", "governance_auditcheckpoint", "audit_entry", "audit_tree_node",
                "audit_tree_head")


class Command(BaseCommand):
    help = ("Give the PostgreSQL role the web and workers connect as what they need: read/write on "
            "every table except the audit tables, where it gets SELECT and INSERT only. Run as the "
            "owner (migration) role after migrate.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("role")

    def handle(self, *args, role: str, **options) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("grant_app_role is for PostgreSQL.")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
            raise CommandError("role must be a plain lowercase PostgreSQL identifier.")
        tables = connection.introspection.table_names()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone() is None:
                raise CommandError(f"PostgreSQL role {role!r} does not exist.")
            cursor.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
            for table in tables:
                cursor.execute(f'REVOKE ALL ON "{table}" FROM {role}')
                if table in AUDIT_TABLES:
                    cursor.execute(f'GRANT SELECT, INSERT ON "{table}" TO {role}')
                else:
                    cursor.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}" TO {role}')
        self.stdout.write(f"{role}: DML on {len(tables) - len(AUDIT_TABLES)} tables, "
                          "SELECT/INSERT on the audit tables.")
