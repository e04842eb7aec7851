from django.db import migrations


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="Console",
            fields=[],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("view_dashboard", "Can view the operator dashboard"),
                    ("operate_tasks", "Can retry, cancel, pause and resume tasks"),
                    ("operate_units", "Can drain, resume and deregister execution units"),
                ],
            },
        ),
    ]
