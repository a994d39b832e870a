"""Every API token ends. Tokens issued before tokens had an end get API_TOKEN_MAX_DAYS from now,
so no agent loses access at the upgrade and none keeps a token forever."""

from datetime import timedelta

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def give_existing_tokens_an_end(apps, schema_editor):
    ApiToken = apps.get_model("governance", "ApiToken")
    ApiToken.objects.filter(expires_at__isnull=True).update(
        expires_at=timezone.now() + timedelta(days=getattr(settings, "API_TOKEN_MAX_DAYS", 90)))


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0008_move_to_rooms'),
    ]

    operations = [
        migrations.AddField(
            model_name='apitoken',
            name='expires_at',
            field=models.DateTimeField(null=True),
        ),
        migrations.AddField(
            model_name='apitoken',
            name='replaced_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                    related_name='+', to='governance.apitoken'),
        ),
        migrations.RunPython(give_existing_tokens_an_end, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='apitoken',
            name='expires_at',
            field=models.DateTimeField(),
        ),
    ]
