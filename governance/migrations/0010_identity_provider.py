"""Sign-in through the identity provider: who signed in as which subject, the group mappings of ringfence.yaml,
what a mapping gave whom (so a removed group takes only that), and the one-time break-glass links."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0009_token_expiry'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='GroupMapping',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('group', models.CharField(max_length=255, unique=True)),
                ('roles', models.JSONField(blank=True, default=list)),
                ('scope', models.JSONField(blank=True, default=dict)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'ordering': ['group'],
            },
        ),
        migrations.CreateModel(
            name='BreakGlassLink',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('digest', models.CharField(max_length=64, unique=True)),
                ('reason', models.TextField()),
                ('issued_by', models.CharField(max_length=150)),
                ('created_at', models.DateTimeField()),
                ('expires_at', models.DateTimeField()),
                ('used_at', models.DateTimeField(blank=True, null=True)),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-created_at'],
                'constraints': [models.CheckConstraint(condition=models.Q(('expires_at__gt', models.F('created_at'))), name='break_glass_link_ends_after_it_starts')],
            },
        ),
        migrations.CreateModel(
            name='IdentityGrant',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('role', models.CharField(blank=True, max_length=40)),
                ('permission', models.CharField(blank=True, max_length=40)),
                ('groups', models.JSONField(default=list)),
                ('granted_at', models.DateTimeField(auto_now_add=True)),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='identity_grants', to=settings.AUTH_USER_MODEL)),
                ('workflow', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='governance.workflow')),
            ],
            options={
                'ordering': ['user', 'role', 'workflow', 'permission'],
                'constraints': [models.CheckConstraint(condition=models.Q(models.Q(('permission', ''), ('workflow__isnull', True), models.Q(('role', ''), _negated=True)), models.Q(('role', ''), ('workflow__isnull', False), models.Q(('permission', ''), _negated=True)), _connector='OR'), name='identity_grant_role_or_permission'), models.UniqueConstraint(condition=models.Q(('workflow__isnull', True)), fields=('user', 'role'), name='identity_grant_one_per_role'), models.UniqueConstraint(condition=models.Q(('workflow__isnull', False)), fields=('user', 'workflow', 'permission'), name='identity_grant_one_per_permission')],
            },
        ),
        migrations.CreateModel(
            name='IdentityLink',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('issuer', models.CharField(max_length=255)),
                ('subject', models.CharField(max_length=255)),
                ('email', models.EmailField(blank=True, max_length=254)),
                ('email_verified', models.BooleanField(default=False)),
                ('groups', models.JSONField(blank=True, default=list)),
                ('staff_granted', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('last_signed_in_at', models.DateTimeField(blank=True, null=True)),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='identity', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['user__username'],
                'constraints': [models.UniqueConstraint(fields=('issuer', 'subject'), name='identity_link_unique_subject')],
            },
        ),
    ]
