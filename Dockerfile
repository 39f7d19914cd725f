# One image for web, worker and beat; docker-compose.yml picks the command.
# Two stages: the build stage installs the locked dependencies into a virtualenv and collects the static files;
# the runtime stage copies those in, with only the libraries WeasyPrint needs at run time, and runs as a non-root
# user. The embedded PostgreSQL/Redis wheels (`make run` / `make test`) are in the dev extra, never in the image.

FROM python:3.11-slim-bookworm AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
# The dependencies first, from the lock file alone: this layer is rebuilt only when the lock changes.
COPY requirements.lock /tmp/requirements.lock
RUN /venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /app
COPY manage.py pyproject.toml ./
COPY config ./config
COPY audiences ./audiences
COPY campaigns ./campaigns
COPY delivery ./delivery
COPY analytics ./analytics
COPY compliance ./compliance
COPY templates ./templates
COPY static ./static
# Hashed, compressed static files and their manifest (STATIC_MANIFEST, as at run time). collectstatic needs some
# SECRET_KEY to load the settings: a random one, thrown away with this stage.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" STATIC_MANIFEST=true \
    /venv/bin/python manage.py collectstatic --noinput --verbosity 0

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH STATIC_MANIFEST=true
# WeasyPrint renders PDF reports with Pango; curl is the health check's client.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --home-dir /app --shell /usr/sbin/nologin app \
    # Mount points of the file volumes (docker-compose.yml): a new named volume takes this ownership.
    && mkdir -p /media /private \
    && chown app:app /media /private
COPY --from=build /venv /venv
COPY --from=build /app /app
WORKDIR /app
USER app
EXPOSE 8000
# Liveness of the web service (worker and beat set their own in docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["gunicorn", "--config", "config/gunicorn.py", "config.wsgi:application"]
