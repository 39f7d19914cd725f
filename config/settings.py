"""One settings module, read from the environment. `.env.example` documents every variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url

from config.env import envbool, envint, envlist, envstr
from config.logs import logging_config, sentry_init

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY", "dev-only-insecure-secret-key-change-me" if DEBUG else "")
# Keys printed in this repository (docker-compose.yml's and .env.example's old placeholders, the DEBUG default).
PUBLIC_SECRET_KEYS = {"change-me-in-production", "change-me", "dev-only-insecure-secret-key-change-me"}
if not DEBUG and (not SECRET_KEY or SECRET_KEY in PUBLIC_SECRET_KEYS):
    # Refuse to start without a real key rather than sign sessions and tokens with a public default.
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a secret value when DEBUG is off "
        "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    )

# Personal data at rest (audiences.pii): AES-256-GCM keys as "id:base64key,id2:base64key", the id that encrypts
# (default: the first), and the look-up hash key. Without keys, both derive from SECRET_KEY — fine for development,
# but then rotating SECRET_KEY would make every stored email and phone unreadable: production sets its own.
# Rotation: docs/security.md.
PII_ENCRYPTION_KEYS = dict(item.split(":", 1) for item in envlist("PII_ENCRYPTION_KEYS", []) if ":" in item)
PII_ENCRYPTION_KEY_ID = envstr("PII_ENCRYPTION_KEY_ID", next(iter(PII_ENCRYPTION_KEYS), ""))
PII_HASH_KEY = envstr("PII_HASH_KEY", "")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = envstr("SITE_URL", "http://127.0.0.1:8000")
# The reverse proxies / load balancers in front of the web service, as CIDRs ("10.0.0.0/8,192.0.2.7"): only a
# request from one of them has its client address taken from X-Forwarded-For (config.client_ip). Empty: nobody's.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "simple_history",
    "anymail",
    "axes",
    "audiences",
    "compliance",
    "campaigns",
    "delivery",
    "analytics",
]

MIDDLEWARE = [
    # First, so every log line of the request, and every request, is counted and carries its id.
    "config.logs.RequestIdMiddleware",
    "config.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Right after SecurityMiddleware (its redirect and headers apply to static files too), before everything that
    # would touch the session or the database for a stylesheet.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audiences.middleware.CurrentOrganisationMiddleware",
    # Last, as django-axes requires: turns a locked-out sign-in into the lockout page (audiences.login_limit).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audiences.context_processors.organisation",
            ],
        },
    },
]

DATABASE_URL = envstr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/campaign_service")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60))}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("Campaign Service runs on PostgreSQL only (DATABASE_URL=postgres://...)")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
# Seconds to connect to / wait for an answer from Redis (cache and broker). Redis answers in microseconds, so these
# bound only how long a request waits on a Redis that is down or hung before it carries on without it.
REDIS_CONNECT_TIMEOUT = float(envstr("REDIS_CONNECT_TIMEOUT", "0.5"))
REDIS_SOCKET_TIMEOUT = float(envstr("REDIS_SOCKET_TIMEOUT", "0.5"))
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": envstr("CACHE_KEY_PREFIX", "cs"),
        # Without timeouts a hung Redis (accepting connections, never answering) holds every request forever;
        # callers treat the error as "Redis is down" and carry on without it (config.outage).
        "OPTIONS": {"socket_connect_timeout": REDIS_CONNECT_TIMEOUT, "socket_timeout": REDIS_SOCKET_TIMEOUT},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # Refuses a locked-out account or client before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in attempts, console and admin (django-axes; audiences.login_limit): this many failures for one account, or
# from one client, lock it out for the cool-off (or until an admin resets it). A refused attempt during the lockout
# does not extend it.
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "audiences.login_limit.axes_client_ip"
AXES_LOCKOUT_CALLABLE = "audiences.login_limit.lockout_response"
AXES_RESET_ON_SUCCESS = False  # a sign-in clears only its own account's failures (audiences.login_limit)
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "campaigns:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files (the console's CSS and htmx, the admin's and Swagger UI's assets): `collectstatic` writes them to
# STATIC_ROOT compressed and named by their content's hash; whitenoise serves them from the web process with
# far-future cache headers. Under DEBUG, runserver serves them from the source directories as they change.
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / "staticfiles")))

# Uploaded and generated files (config.files): "public" for what recipients' apps load (in-app icons, stable URLs),
# "default" for private files (CSV imports, generated reports; URLs that expire after PRIVATE_FILE_URL_SECONDS).
# STORAGE_BACKEND=local (default): the disk, public files under MEDIA_ROOT served at MEDIA_URL, private ones under
# PRIVATE_MEDIA_ROOT behind signed links, both served by the web service (MEDIA_SERVE=false when a proxy serves
# MEDIA_ROOT). STORAGE_BACKEND=s3: an S3-compatible bucket (AWS, MinIO, Ceph…), public files under public/ (the
# bucket policy, or S3_PUBLIC_ACL, must let anyone read that prefix), private ones under private/ by presigned URLs.
STORAGE_BACKEND = envstr("STORAGE_BACKEND", "local")
MEDIA_ROOT = Path(envstr("MEDIA_ROOT", str(BASE_DIR / ".data" / "media")))
MEDIA_URL = "/media/"
MEDIA_SERVE = envbool("MEDIA_SERVE", True)
PRIVATE_MEDIA_ROOT = Path(envstr("PRIVATE_MEDIA_ROOT", str(BASE_DIR / ".data" / "private")))
PRIVATE_FILE_URL_SECONDS = envint("PRIVATE_FILE_URL_SECONDS", 3600)
if STORAGE_BACKEND == "local":
    FILE_STORAGES = {
        # No location: it follows MEDIA_ROOT.
        "public": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "default": {
            "BACKEND": "config.files.SignedURLFileSystemStorage",
            # A report regenerated replaces the last one under its name (uploads are named uniquely anyway).
            "OPTIONS": {"location": PRIVATE_MEDIA_ROOT, "base_url": None, "allow_overwrite": True},
        },
    }
elif STORAGE_BACKEND == "s3":
    _S3 = {
        "bucket_name": envstr("S3_BUCKET"),
        "endpoint_url": envstr("S3_ENDPOINT_URL") or None,  # empty: AWS
        "region_name": envstr("S3_REGION") or None,
        "access_key": envstr("S3_ACCESS_KEY_ID") or None,  # empty: boto3's own chain (instance role, ~/.aws)
        "secret_key": envstr("S3_SECRET_ACCESS_KEY") or None,
        "addressing_style": envstr("S3_ADDRESSING_STYLE") or None,  # "path" for most self-hosted stores
        "signature_version": "s3v4",  # what every current store accepts (boto's default for presigning is v2)
        "file_overwrite": True,
    }
    FILE_STORAGES = {
        "public": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                **_S3,
                "location": "public",
                "querystring_auth": False,
                "default_acl": envstr("S3_PUBLIC_ACL") or None,
                "custom_domain": envstr("S3_PUBLIC_DOMAIN") or None,  # a CDN in front of the bucket
                "file_overwrite": False,
            },
        },
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {**_S3, "location": "private", "querystring_expire": PRIVATE_FILE_URL_SECONDS},
        },
    }
    if not _S3["bucket_name"]:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs S3_BUCKET")
else:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"STORAGE_BACKEND must be local or s3, got {STORAGE_BACKEND!r}")
# STATIC_MANIFEST=true (the image sets it, for collectstatic and at run time): names with the content's hash, from
# the manifest collectstatic writes, and gzip/brotli copies beside them (STATIC_COMPRESS=false skips those: the
# compression takes a minute of CPU). Off (development, tests): plain names, nothing to collect first.
STATIC_MANIFEST = envbool("STATIC_MANIFEST", False)
STATIC_COMPRESS = envbool("STATIC_COMPRESS", True)
if not STATIC_MANIFEST:
    import warnings

    # whitenoise warns once per process that STATIC_ROOT was never collected: expected without the manifest.
    warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)
STORAGES = {
    **FILE_STORAGES,
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if STATIC_COMPRESS
            else "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
        )
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Behind a TLS-terminating proxy: the header it sets to say the client used https, e.g.
# "HTTP_X_FORWARDED_PROTO,https" (empty: none; never set it when clients can reach the web service directly).
_PROXY_SSL_HEADER = envlist("SECURE_PROXY_SSL_HEADER", [])
SECURE_PROXY_SSL_HEADER = (_PROXY_SSL_HEADER[0], _PROXY_SSL_HEADER[1]) if len(_PROXY_SSL_HEADER) == 2 else None
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
# Probes and scrapers inside the cluster speak plain http to the container.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)  # sent on https responses only; production: 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp). The console's templates still carry inline event handlers (confirm dialogs,
# auto-submitting selects) and Swagger UI an inline bootstrap script, hence 'unsafe-inline' for scripts: no script
# from another origin, no plugin, no framing and no form posting elsewhere. htmx and Swagger UI add inline styles;
# email previews show the marketer's https images. Each directive can be replaced from the environment
# (CSP_SCRIPT_SRC="'self'" …); CSP_REPORT_ONLY=true reports instead of enforcing.
_CSP_DEFAULTS = {
    "default-src": "'self'",
    "script-src": "'self' 'unsafe-inline'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: https:",
    "font-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
_CSP = {
    "DIRECTIVES": {
        name: envstr("CSP_" + name.upper().replace("-", "_"), value).split() for name, value in _CSP_DEFAULTS.items()
    }
}
if envbool("CSP_REPORT_ONLY", False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP
    CONTENT_SECURITY_POLICY = None
else:
    CONTENT_SECURITY_POLICY = _CSP
# Permissions-Policy (django-permissions-policy): no page of ours needs any of these browser features.
PERMISSIONS_POLICY = {
    feature: []
    for feature in envlist(
        "PERMISSIONS_POLICY_DENY",
        ["camera", "microphone", "geolocation", "payment", "usb", "interest-cohort", "browsing-topics"],
    )
}

EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = envint("EMAIL_PORT", 1025)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)  # STARTTLS (port 587); EMAIL_USE_SSL: TLS from the start (465)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
# Seconds one SMTP step may take (connecting, any reply, the answer to a message's data): a mail server that stops
# answering costs a send batch at most this once, then the batch's messages wait for their retry.
EMAIL_TIMEOUT = float(envstr("EMAIL_TIMEOUT", "30"))
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "campaigns@localhost")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # API keys first: its `Bearer` challenge turns "no credentials" into 401 instead of 403.
        "audiences.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["audiences.permissions.IsOrganisationMember"],
    "DEFAULT_THROTTLE_CLASSES": ["audiences.throttling.ApiKeyRateThrottle"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.StandardPagination",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "PAGE_SIZE": 20,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
# Requests per window for each API key (or console session) - "<count>/<seconds>".
API_RATE_LIMIT = envstr("API_RATE_LIMIT", "1200/60")

SPECTACULAR_SETTINGS = {
    "TITLE": "Campaign Service API",
    "DESCRIPTION": (
        "Multi-channel marketing campaigns. Authenticate with `Authorization: Bearer <api key>`; "
        "every object is scoped to the key's organisation."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name per choice set used by several fields (otherwise hashed names like Channel826Enum, and warnings).
    "ENUM_NAME_OVERRIDES": {
        "ChannelEnum": "campaigns.models.Channel",
        "CampaignTypeEnum": "campaigns.models.CampaignType",
        "CategoryEnum": ["marketing", "transactional"],
    },
}

CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# With late acks a task interrupted by a lost broker connection is redelivered; cancelling it avoids running twice.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
}
# No retry: a publish that fails fails fast, the caller logs it and the pump finds the work in PostgreSQL
# (config.outage.task_enqueue). The default, three retries 0.2 s apart, kept a request 0.7 s on a dead broker, and
# each retry waits another socket timeout on a hung one. A pooled connection gone stale across a Redis restart needs
# no retry here: redis-py reconnects.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 0}
# An import still pending this long is taken for one whose task message was lost, and asked for again.
CONTACT_IMPORT_STALL_SECONDS = float(envstr("CONTACT_IMPORT_STALL_SECONDS", "60"))
# django-celery-beat's scheduler, plus the heartbeat /readyz and the beat-lag metric read (config.health).
CELERY_BEAT_SCHEDULER = "config.health:HeartbeatScheduler"
# Beat is not ready once its last heartbeat is older than this (it ticks at least every 5 s).
BEAT_HEARTBEAT_MAX_AGE = float(envstr("BEAT_HEARTBEAT_MAX_AGE", "60"))
# Workers log through LOGGING below (JSON, with the task's ids), not through Celery's own handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = envstr("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_BEAT_SCHEDULE = {
    # The delivery engine's safety net: starts due scheduled campaigns, restarts stalled runs, finishes done ones.
    "delivery-pump": {
        "task": "delivery.tasks.delivery_pump_task",
        "schedule": timedelta(seconds=float(envstr("DELIVERY_PUMP_SECONDS", "2"))),
        "options": {"expires": 10},
    },
    # Starts CSV imports whose task message was lost (uploaded while the broker was down).
    "contact-imports-pump": {
        "task": "audiences.tasks.contact_imports_pump_task",
        "schedule": timedelta(seconds=float(envstr("CONTACT_IMPORT_PUMP_SECONDS", "30"))),
        "options": {"expires": 30},
    },
    "event-feed-pull": {
        "task": "audiences.tasks.event_feed_pull_task",
        "schedule": timedelta(seconds=float(envstr("EVENT_FEED_PULL_SECONDS", "5"))),
        "options": {"expires": 30},
    },
    # Folds each metric key's older deltas into one row, so metric reads stay a few thousand rows at most.
    "metrics-compact": {
        "task": "analytics.tasks.metrics_compact_task",
        "schedule": timedelta(seconds=float(envstr("METRICS_COMPACT_SECONDS", "60"))),
        "options": {"expires": 60},
    },
    # The sandbox's simulated engagement, recorded as its time comes (delivery.sandbox): one index probe at rest.
    "sandbox-engagement": {
        "task": "delivery.tasks.scheduled_engagement_record_task",
        "schedule": timedelta(seconds=float(envstr("SANDBOX_ENGAGEMENT_SECONDS", "5"))),
        "options": {"expires": 30},
    },
    # Auto-winner: one look at every running campaign that has it on (analytics.autowinner).
    "auto-winner": {
        "task": "analytics.tasks.auto_winner_evaluate_task",
        "schedule": timedelta(seconds=60),
        "options": {"expires": 60},
    },
    # Retries consent changes account_service has not accepted yet (a no-op without ACCOUNT_SERVICE_URL).
    "compliance-outbox": {
        "task": "compliance.tasks.compliance_outbox_push_task",
        "schedule": timedelta(seconds=float(envstr("ACCOUNT_SERVICE_RETRY_SECONDS", "30"))),
        "options": {"expires": 60},
    },
    # Marketing email complaint rate over 24 h: alert, then hold (delivery.complaints).
    "complaint-rate-check": {
        "task": "delivery.tasks.complaint_rate_check_task",
        "schedule": timedelta(seconds=float(envstr("COMPLAINT_RATE_CHECK_SECONDS", "300"))),
        "options": {"expires": 300},
    },
    "purge-deleted-campaigns": {
        "task": "campaigns.tasks.campaigns_purge_deleted_task",
        "schedule": timedelta(hours=1),
        "options": {"expires": 30 * 60},
    },
}

# Delivery engine. Backends per channel (dotted paths); the sandbox provider is every channel's default.
DELIVERY_BACKENDS = {
    "default": envstr("DELIVERY_DEFAULT_BACKEND", "delivery.sandbox.SandboxBackend"),
    # e.g. DELIVERY_BACKEND_EMAIL=delivery.channels.EmailBackend, …_SMS / _WHATSAPP=…NotificationServiceBackend,
    # …_WEBHOOK=…WebhookBackend, …_IN_APP=…InAppBackend; unset channels use the default.
    **{
        channel: envstr(f"DELIVERY_BACKEND_{channel.upper()}", "")
        for channel in ("email", "sms", "whatsapp", "in_app", "webhook")
        if envstr(f"DELIVERY_BACKEND_{channel.upper()}", "")
    },
}
# A run whose share of failed and bounced messages goes over this (after at least AUTO_PAUSE_MIN hand-offs)
# pauses itself and says why.
DELIVERY_AUTO_PAUSE_RATE = float(envstr("DELIVERY_AUTO_PAUSE_RATE", "0.25"))
DELIVERY_AUTO_PAUSE_MIN = envint("DELIVERY_AUTO_PAUSE_MIN", 200)
# Concurrent requests per batch for HTTP channels (notification_service, webhooks).
HTTP_SEND_CONCURRENCY = envint("HTTP_SEND_CONCURRENCY", 100)
WEBHOOK_TIMEOUT_SECONDS = float(envstr("WEBHOOK_TIMEOUT_SECONDS", "10"))
# "host:port" targets webhooks may reach although they are internal (empty: none).
SSRF_ALLOWED_TARGETS = [t.strip().lower() for t in envstr("SSRF_ALLOWED_TARGETS", "").split(",") if t.strip()]
NOTIFICATION_SERVICE_URL = envstr("NOTIFICATION_SERVICE_URL", "")
NOTIFICATION_SERVICE_TOKEN = envstr("NOTIFICATION_SERVICE_TOKEN", "")
DELIVERY_BATCH_SIZE = envint("DELIVERY_BATCH_SIZE", 1000)
# Send tasks started per run (more than the worker processes only queue up).
DELIVERY_PARALLELISM = envint("DELIVERY_PARALLELISM", 4)
# A send task works this long, then hands over to a fresh one.
DELIVERY_TASK_SECONDS = float(envstr("DELIVERY_TASK_SECONDS", "10"))
# A run without progress for this long while messages are due is restarted by the pump.
DELIVERY_STALL_SECONDS = float(envstr("DELIVERY_STALL_SECONDS", "15"))
DELIVERY_MAX_ATTEMPTS = envint("DELIVERY_MAX_ATTEMPTS", 5)
DELIVERY_RETRY_BASE_SECONDS = float(envstr("DELIVERY_RETRY_BASE_SECONDS", "30"))
# An alarm this early (clock skew between beat and the database) still starts the occurrence.
SCHEDULE_EARLY_TOLERANCE_SECONDS = envint("SCHEDULE_EARLY_TOLERANCE_SECONDS", 5)
# The sandbox provider's behaviour; a campaign's sandbox_profile overrides any part of it.
SANDBOX_PROVIDER = {
    "latency_ms": float(envstr("SANDBOX_LATENCY_MS", "0")),
    "delivered": 0.97,
    "bounced": 0.02,
    "failed": 0.01,
    "engagement": {"open": 0.35, "machine_open": 0.08, "click": 0.12, "conversion": 0.2, "order_value": 40},
    "variants": {},
    # Opens, clicks and conversions arrive minutes to hours after delivery, as people's would (false: at the send).
    "engagement_over_time": envbool("SANDBOX_ENGAGEMENT_OVER_TIME", True),
    "ledger": envbool("SANDBOX_LEDGER", True),
}

# External services (empty URL: the embedded default inside the monolith is used).
USER_360_URL = envstr("USER_360_URL", "")
USER_360_TOKEN = envstr("USER_360_TOKEN", "")
INTELLIGENT_QUERY_URL = envstr("INTELLIGENT_QUERY_URL", "")
INTELLIGENT_QUERY_TOKEN = envstr("INTELLIGENT_QUERY_TOKEN", "")
ISA_CREATIVE_URL = envstr("ISA_CREATIVE_URL", "")
ISA_CREATIVE_TOKEN = envstr("ISA_CREATIVE_TOKEN", "")
# How long isA_Creative's last answers are kept, to offer while it is down (campaigns.content.library).
ISA_CREATIVE_CACHE_SECONDS = envint("ISA_CREATIVE_CACHE_SECONDS", 7 * 24 * 3600)
# A run whose audience service (intelligent_query) fails at its start waits and retries with backoff (from
# AUDIENCE_SERVICE_RETRY_SECONDS, doubling, at most 5 minutes apart) for up to AUDIENCE_SERVICE_WAIT_SECONDS,
# then fails with the reason and its campaign goes back to draft (delivery.runs).
AUDIENCE_SERVICE_RETRY_SECONDS = float(envstr("AUDIENCE_SERVICE_RETRY_SECONDS", "5"))
AUDIENCE_SERVICE_WAIT_SECONDS = envint("AUDIENCE_SERVICE_WAIT_SECONDS", 30 * 60)
TASK_SERVICE_URL = envstr("TASK_SERVICE_URL", "")
# An external event_service to pull events from (empty: events arrive only through our event API).
EVENT_SERVICE_URL = envstr("EVENT_SERVICE_URL", "")
EVENT_SERVICE_TOKEN = envstr("EVENT_SERVICE_TOKEN", "")
TASK_SERVICE_TOKEN = envstr("TASK_SERVICE_TOKEN", "")
# account_service receives every unsubscribe and preference change through the outbox (empty: no push; our
# preference store is the source of truth either way).
ACCOUNT_SERVICE_URL = envstr("ACCOUNT_SERVICE_URL", "")
ACCOUNT_SERVICE_TOKEN = envstr("ACCOUNT_SERVICE_TOKEN", "")
ACCOUNT_SERVICE_MAX_ATTEMPTS = envint("ACCOUNT_SERVICE_MAX_ATTEMPTS", 20)
ACCOUNT_SERVICE_RETRY_BASE_SECONDS = float(envstr("ACCOUNT_SERVICE_RETRY_BASE_SECONDS", "30"))
# Marketing SMS go out only inside this window of the recipient's local time, else wait ("" turns the rule off).
MARKETING_SMS_WINDOW = envstr("MARKETING_SMS_WINDOW", "08:00-21:00")
# Free-form WhatsApp only within 24 h of the contact's last inbound message (approved templates any time).
WHATSAPP_SESSION_RULE = envbool("WHATSAPP_SESSION_RULE", True)
# Marketing email complaints over the last 24 h: above ALERT an alert is recorded, above PAUSE marketing email is
# held until released; only judged once at least MIN_SENT emails went out.
COMPLAINT_RATE_ALERT = float(envstr("COMPLAINT_RATE_ALERT", "0.001"))
COMPLAINT_RATE_PAUSE = float(envstr("COMPLAINT_RATE_PAUSE", "0.003"))
COMPLAINT_RATE_MIN_SENT = envint("COMPLAINT_RATE_MIN_SENT", 1000)
# Public unsubscribe and preference pages, per client IP: all requests, and requests with a bad token (past that,
# the IP is refused until the window ends) - "<count>/<seconds>".
RECIPIENT_LINK_RATE_LIMIT = envstr("RECIPIENT_LINK_RATE_LIMIT", "60/60")
RECIPIENT_LINK_FAILURE_LIMIT = envstr("RECIPIENT_LINK_FAILURE_LIMIT", "10/600")
EXTERNAL_HTTP_TIMEOUT = float(envstr("EXTERNAL_HTTP_TIMEOUT", "10"))
# External segments are re-resolved when their members are older than this when a campaign needs them.
EXTERNAL_SEGMENT_MAX_AGE_SECONDS = envint("EXTERNAL_SEGMENT_MAX_AGE_SECONDS", 300)

# Unsubscribe by mail (RFC 2369 mailto, delivery.inbound_mail): the domain whose mail a provider's inbound webhook
# posts to /hooks/inbound/<provider>/ (empty: List-Unsubscribe carries only the https URI and those endpoints answer
# 404). The webhooks authenticate with HTTP basic auth, ANYMAIL_WEBHOOK_SECRET ("user:password"), required then;
# Mailgun's also with its signing key.
INBOUND_MAIL_DOMAIN = envstr("INBOUND_MAIL_DOMAIN", "").strip().lower()
ANYMAIL = {
    "WEBHOOK_SECRET": envstr("ANYMAIL_WEBHOOK_SECRET", ""),
    "MAILGUN_WEBHOOK_SIGNING_KEY": envstr("ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY", ""),
}
if INBOUND_MAIL_DOMAIN and ":" not in ANYMAIL["WEBHOOK_SECRET"]:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured('INBOUND_MAIL_DOMAIN needs ANYMAIL_WEBHOOK_SECRET ("user:password")')

# Soft-deleted campaigns can be restored for this long, then the purge task removes them for good.
CAMPAIGN_RESTORE_WINDOW_DAYS = envint("CAMPAIGN_RESTORE_WINDOW_DAYS", 30)

# DKIM (delivery.dkim): the resolvers the on-demand record check asks ("ip" or "ip:port", comma-separated; empty:
# the system's), how long it waits, and how long a worker process keeps a sending domain's signer before it reads
# the key again (a rotated key reaches every worker within this).
DKIM_DNS_NAMESERVERS = envlist("DKIM_DNS_NAMESERVERS", [])
DKIM_DNS_TIMEOUT = float(envstr("DKIM_DNS_TIMEOUT", "5"))
DKIM_SIGNER_CACHE_SECONDS = envint("DKIM_SIGNER_CACHE_SECONDS", 60)

# Operations (config.logs, config.metrics, docs/operations.md): JSON log lines ("text" for a terminal) with the
# request / run / campaign ids, /metrics behind a bearer token (unset: off), error tracking when SENTRY_DSN is set.
LOG_FORMAT = envstr("LOG_FORMAT", "json")
if LOG_FORMAT not in ("json", "text"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured('LOG_FORMAT is "json" or "text"')
LOGGING = logging_config(level=envstr("LOG_LEVEL", "INFO"), fmt=LOG_FORMAT)
METRICS_TOKEN = envstr("METRICS_TOKEN", "")
SENTRY_DSN = envstr("SENTRY_DSN", "")
if SENTRY_DSN:
    sentry_init(
        SENTRY_DSN,
        environment=envstr("SENTRY_ENVIRONMENT", ""),
        traces_sample_rate=float(envstr("SENTRY_TRACES_SAMPLE_RATE", "0")),
    )
