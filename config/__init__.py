# Importing the Celery app here makes `@shared_task` bind to it when Django starts (cookiecutter-django layout).
# Importing the checks registers the deploy checks (`manage.py check --deploy`) before any command runs them.
from . import checks  # noqa: F401
from .celery import app as celery_app

__all__ = ("celery_app",)
