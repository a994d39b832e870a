"""The transparency log's tables: entries accepted at commit, the Merkle tree's nodes, signed tree
heads; all append-only like the events (the same refusing trigger, ENABLE ALWAYS). The events
written before the sequencer become the tree's first leaves in seq order (leaf seq - 1)."""

import django.db.models.deletion
import hashlib

from django.db import migrations, models

NEW_TABLES = ("audit_entry", "audit_tree_node", "audit_tree_head")
BATCH = 5000


def refuse_changes(apps, schema_editor):
    """The same guard as the events' (governance 0002): no UPDATE, DELETE or TRUNCATE."""
    conn = schema_editor.connection
    with conn.cursor() as cursor:
        for table in NEW_TABLES:
            if conn.vendor == "postgresql":
                cursor.execute(f"REVOKE ALL ON {table} FROM PUBLIC")
                cursor.execute(f"CREATE TRIGGER {table}_no_mod BEFORE UPDATE OR DELETE ON {table} "
                               "FOR EACH ROW EXECUTE FUNCTION ringfence_audit_refuse()")
                cursor.execute(f"CREATE TRIGGER {table}_no_trunc BEFORE TRUNCATE ON {table} "
                               "FOR EACH STATEMENT EXECUTE FUNCTION ringfence_audit_refuse()")
                cursor.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_mod")
                cursor.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_trunc")
            elif conn.vendor == "sqlite":
                for op in ("UPDATE", "DELETE"):
                    cursor.execute(
                        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, 'ringfence audit trail is append-only: {op} refused'); END")


def existing_events_become_leaves(apps, schema_editor):
    """Leaf i is event seq i + 1 (its canonical bytes); every complete perfect subtree is stored."""
    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditTreeNode = apps.get_model("audit", "AuditTreeNode")
    frontier: list[tuple[int, bytes]] = []  # (level, hash) of the rightmost complete subtrees
    pending = []
    size = 0
    for seq, canonical in AuditEvent.objects.order_by("seq").values_list("seq", "canonical").iterator(BATCH):
        if seq != size + 1:
            raise RuntimeError(f"audit event #{size + 1} is missing (next is #{seq}): verify the chain first")
        level, node = 0, hashlib.sha256(b"\x00" + canonical.encode("utf-8")).digest()
        pending.append(AuditTreeNode(level=0, index=size, hash=node))
        size += 1
        while frontier and frontier[-1][0] == level:
            _, left = frontier.pop()
            node, level = hashlib.sha256(b"\x01" + left + node).digest(), level + 1
            pending.append(AuditTreeNode(level=level, index=(size >> level) - 1, hash=node))
        frontier.append((level, node))
        if len(pending) >= BATCH:
            AuditTreeNode.objects.bulk_create(pending)
            pending = []
    AuditTreeNode.objects.bulk_create(pending)


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditTreeNode',
            fields=[
                ('pk', models.CompositePrimaryKey('level', 'index', blank=True, editable=False, primary_key=True, serialize=False)),
                ('level', models.PositiveSmallIntegerField()),
                ('index', models.BigIntegerField()),
                ('hash', models.BinaryField(max_length=32)),
            ],
            options={
                'db_table': 'audit_tree_node',
            },
        ),
        migrations.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('xid', models.BigIntegerField()),
                ('occurred_at', models.DateTimeField()),
                ('action', models.CharField(max_length=64)),
                ('canonical', models.TextField()),
                ('mac', models.CharField(max_length=64)),
            ],
            options={
                'db_table': 'audit_entry',
                'indexes': [models.Index(fields=['xid', 'id'], name='audit_entry_order_idx')],
            },
        ),
        migrations.AddField(
            model_name='auditevent',
            name='entry',
            field=models.OneToOneField(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='event', to='audit.auditentry'),
        ),
        migrations.AddField(
            model_name='auditevent',
            name='sequenced_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='AuditTreeHead',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField()),
                ('tree_size', models.BigIntegerField()),
                ('root_hash', models.CharField(max_length=64)),
                ('note', models.TextField()),
            ],
            options={
                'db_table': 'audit_tree_head',
                'ordering': ['tree_size', 'id'],
                'indexes': [models.Index(fields=['tree_size'], name='audit_tree_head_size_idx')],
            },
        ),
        migrations.RunPython(refuse_changes, migrations.RunPython.noop),
        migrations.RunPython(existing_events_become_leaves, migrations.RunPython.noop),
    ]
