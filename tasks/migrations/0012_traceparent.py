from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tasks', '0011_queue_retention'),
    ]

    operations = [
        migrations.AddField(
            model_name='task',
            name='traceparent',
            field=models.CharField(blank=True, max_length=55, null=True),
        ),
    ]
