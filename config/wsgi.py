import os

from django.core.wsgi import get_wsgi_application

from config import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
tracing.setup(tracing.WEB_SERVICE)  # before the application loads its middleware; nothing without OTEL_* set
application = get_wsgi_application()
