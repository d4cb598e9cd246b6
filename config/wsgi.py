import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# The segment index's common parts loaded while the process waits for its first request.
from tagging.segment_index import warm_in_background  # noqa: E402

warm_in_background()
