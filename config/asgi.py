"""The ASGI application: production serves it with gunicorn and uvicorn workers, `make run` with uvicorn.

    gunicorn config.asgi:application -k uvicorn_worker.UvicornWorker --workers 4

Pages and most endpoints are sync Django views, which Django runs in a thread of their own per
request; the approval long-poll is async and waits in the event loop, so a waiting agent holds no
worker (approvals.waiting). Keep DATABASE_CONN_MAX_AGE at 0 under ASGI: each request's sync code
runs in a fresh thread, so a persistent connection would never be reused, only left open. Set
DATABASE_POOL_MAX_SIZE instead (the web unit sets 8): each process then keeps a pool of connections
that requests borrow and give back, instead of connecting once per request.
"""

import os

from django.core.asgi import get_asgi_application

from config import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
tracing.setup(tracing.WEB_SERVICE)  # before the application loads its middleware; nothing without OTEL_* set
application = get_asgi_application()
