"""The audit tables were created by governance 0001/0002 (with their no-UPDATE/DELETE triggers)
and keep their names: this migration only tells Django's state that the models live here now."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('governance', '0007_workflow_holidays'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='AuditCheckpoint',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('created_at', models.DateTimeField()),
                        ('head_seq', models.BigIntegerField()),
                        ('head_hash', models.CharField(max_length=64)),
                        ('signature', models.CharField(max_length=64)),
                        ('reason', models.CharField(default='interval', max_length=20)),
                    ],
                    options={
                        'db_table': 'governance_auditcheckpoint',
                        'ordering': ['created_at', 'id'],
                    },
                ),
                migrations.CreateModel(
                    name='AuditEvent',
                    fields=[
                        ('seq', models.BigIntegerField(primary_key=True, serialize=False)),
                        ('occurred_at', models.DateTimeField(db_index=True)),
                        ('actor_kind', models.CharField(max_length=10)),
                        ('actor_id', models.CharField(blank=True, max_length=64)),
                        ('actor_label', models.CharField(max_length=150)),
                        ('action', models.CharField(db_index=True, max_length=64)),
                        ('subject_type', models.CharField(max_length=64)),
                        ('subject_id', models.CharField(max_length=64)),
                        ('workflow_slug', models.CharField(blank=True, db_index=True, max_length=63)),
                        ('reason', models.TextField(blank=True)),
                        ('data', models.JSONField(default=dict)),
                        ('canonical', models.TextField()),
                        ('prev_hash', models.CharField(max_length=64, unique=True)),
                        ('hash', models.CharField(max_length=64, unique=True)),
                    ],
                    options={
                        'db_table': 'governance_auditevent',
                        'ordering': ['seq'],
                        'indexes': [models.Index(fields=['subject_type', 'subject_id'], name='audit_subject_idx')],
                    },
                ),
            ],
        ),
    ]
