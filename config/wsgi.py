import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# The production web service (gunicorn) does not start on development defaults for contacts' encryption keys.
from config.checks import refuse_unsafe_production  # noqa: E402 - needs the settings loaded above

refuse_unsafe_production()
