"""Export files uploaded to the auditors' verify page wait here for a worker (not part of the log:
rows are deleted once checked, so these tables are not append-only)."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0002_transparency_log'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='VerifyUpload',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('name', models.CharField(max_length=255)),
                ('kind', models.CharField(choices=[('chain', 'the whole chain'), ('excerpt', 'an excerpt')],
                                          max_length=10)),
                ('size', models.BigIntegerField(default=0)),
                ('sha256', models.CharField(blank=True, max_length=64)),
                ('created_at', models.DateTimeField()),
                ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+',
                                            to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'db_table': 'audit_verify_upload',
                'constraints': [
                    models.CheckConstraint(condition=models.Q(('kind__in', ['chain', 'excerpt'])),
                                           name='audit_verify_upload_kind'),
                    models.CheckConstraint(condition=models.Q(('size__gte', 0)), name='audit_verify_upload_size'),
                ],
            },
        ),
        migrations.CreateModel(
            name='VerifyUploadChunk',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('index', models.PositiveIntegerField()),
                ('data', models.BinaryField()),
                ('upload', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='chunks',
                                             to='audit.verifyupload')),
            ],
            options={
                'db_table': 'audit_verify_upload_chunk',
                'constraints': [models.UniqueConstraint(fields=('upload', 'index'),
                                                        name='audit_verify_upload_chunk_once')],
            },
        ),
    ]
