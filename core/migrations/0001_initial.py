"""The idempotency table was created by governance 0004/0005 and keeps its name: this migration
only tells Django's state that the model lives here now."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('governance', '0007_workflow_holidays'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='IdempotencyKey',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=255)),
                        ('fingerprint', models.CharField(max_length=64)),
                        ('method', models.CharField(max_length=10)),
                        ('path', models.CharField(max_length=255)),
                        ('state', models.CharField(choices=[('in_flight', 'in flight'), ('completed', 'Completed')], default='in_flight', max_length=10)),
                        ('response_status', models.PositiveSmallIntegerField(blank=True, null=True)),
                        ('response_content_type', models.CharField(blank=True, max_length=100)),
                        ('response_body', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField()),
                        ('expires_at', models.DateTimeField(db_index=True)),
                        ('service_account', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='governance.serviceaccount')),
                        ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'governance_idempotencykey',
                        'constraints': [models.UniqueConstraint(condition=models.Q(('service_account__isnull', False)), fields=('service_account', 'key'), name='idempotency_key_unique_per_service'), models.UniqueConstraint(condition=models.Q(('user__isnull', False)), fields=('user', 'key'), name='idempotency_key_unique_per_user'), models.CheckConstraint(condition=models.Q(models.Q(('service_account__isnull', False), ('user__isnull', True)), models.Q(('service_account__isnull', True), ('user__isnull', False)), _connector='OR'), name='idempotency_key_one_owner'), models.CheckConstraint(condition=models.Q(('state__in', ['in_flight', 'completed'])), name='idempotency_key_state_valid'), models.CheckConstraint(condition=models.Q(('state', 'in_flight'), ('response_status__isnull', False), _connector='OR'), name='idempotency_key_completed_has_response')],
                    },
                ),
            ],
        ),
    ]
