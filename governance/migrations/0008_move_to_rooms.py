"""The audit and idempotency models moved to the audit and core apps with their tables unchanged
(see audit 0001 and core 0001): governance's state forgets them, the database is untouched."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0007_workflow_holidays'),
        ('audit', '0001_initial'),
        ('core', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(
                    name='AuditCheckpoint',
                ),
                migrations.RemoveIndex(
                    model_name='auditevent',
                    name='audit_subject_idx',
                ),
                migrations.DeleteModel(
                    name='AuditEvent',
                ),
                migrations.RemoveConstraint(
                    model_name='idempotencykey',
                    name='idempotency_key_unique_per_service',
                ),
                migrations.RemoveConstraint(
                    model_name='idempotencykey',
                    name='idempotency_key_unique_per_user',
                ),
                migrations.RemoveConstraint(
                    model_name='idempotencykey',
                    name='idempotency_key_one_owner',
                ),
                migrations.RemoveConstraint(
                    model_name='idempotencykey',
                    name='idempotency_key_state_valid',
                ),
                migrations.RemoveConstraint(
                    model_name='idempotencykey',
                    name='idempotency_key_completed_has_response',
                ),
                migrations.DeleteModel(
                    name='IdempotencyKey',
                ),
            ],
        ),
    ]
