"""Django settings for ecpower.

Everything that differs between machines comes from the environment through ``ecpower.env``;
``.env.example`` lists every variable. The embedded default (no variables at all, with
``DJANGO_DEBUG=1``) is a SQLite file under the project and the database task broker.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from ecpower.env import env_bool, env_float, env_int, env_list, env_secret, env_str, load_env_file

BASE_DIR = Path(__file__).resolve().parent.parent

# A development checkout may keep its variables in .env (make demo writes one); the real
# environment always wins. ECPOWER_ENV_FILE points elsewhere (or at /dev/null to skip it).
load_env_file(Path(os.environ.get("ECPOWER_ENV_FILE", BASE_DIR / ".env")))

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_secret("SECRET_KEY", default=None)
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DJANGO_DEBUG is off.")
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "import_export",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "ecpower.commerce",
    "segments",
    "integrations",
    "metrics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ecpower.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "ecpower" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "ecpower.wsgi.application"

# --- Database -------------------------------------------------------------------------------
# DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/ecpower ; default: SQLite under the project.
DATABASE_URL = env_str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes; a busy timeout instead of "database is locked".
    # IMMEDIATE transactions take the write lock when they begin (waiting up to the timeout), so a
    # transaction that read first never fails to upgrade while the worker's broker writes.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
         "transaction_mode": "IMMEDIATE"}
    )

elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # Segment queries negate subqueries (NOT IN): PostgreSQL hashes the subquery only when it fits in
    # work_mem, else it rescans it per customer, which at a million customers takes hours instead of
    # seconds. Sized for a 1M-customer store (docs/performance.md); per sort/hash node, per connection.
    # random_page_cost: PostgreSQL's default (4) assumes spinning disks and makes an incremental update
    # scan every order instead of looking up the few customers it touches; 1.1 suits SSDs.
    # effective_cache_size: how much of a table the planner assumes is cached when one index scan visits
    # its rows in random order. PostgreSQL's default (4GB) let it read 3.2 M of 4.7 M orders one index
    # entry at a time (13.7 s) instead of scanning the table (2.6 s): a page in the OS cache but not in
    # shared_buffers still costs a read per visit. Set it near shared_buffers plus what stays hot.
    # jit: compiling a segment query costs 0.1–0.2 s, more than most of them take to run.
    # max_parallel_workers_per_gather: a parallel plan builds the hash of a "customer IN (…)" subquery
    # once in every worker, so three processes do the same work; the recompute already runs segments
    # side by side on SEGMENT_RECOMPUTE_THREADS connections instead (docs/performance.md).
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = (
        f"-c work_mem={env_str('DATABASE_WORK_MEM', default='128MB')} "
        f"-c random_page_cost={env_str('DATABASE_RANDOM_PAGE_COST', default='1.1')} "
        f"-c effective_cache_size={env_str('DATABASE_EFFECTIVE_CACHE_SIZE', default='1GB')} "
        f"-c jit={env_str('DATABASE_JIT', default='off')} "
        f"-c max_parallel_workers_per_gather={env_str('DATABASE_PARALLEL_WORKERS', default='0')}")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Language and time ----------------------------------------------------------------------
LANGUAGE_CODE = env_str("LANGUAGE_CODE", default="ja")
# Each language is offered in its own name, so staff find theirs whatever the current one is.
LANGUAGES = [("ja", "日本語"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# The default time zone of new stores and of the admin; each store keeps its own.
TIME_ZONE = env_str("TIME_ZONE", default="Asia/Tokyo")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", default=str(BASE_DIR / "media")))

# --- Email ------------------------------------------------------------------------------------
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", default="ecpower <noreply@localhost>")

# --- Stored partner credentials ---------------------------------------------------------------
# Fernet keys (comma separated, newest first, so keys can be rotated). Generate one with
#   python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
ENCRYPTION_KEYS = env_list("ECPOWER_ENCRYPTION_KEYS", [])
if not ENCRYPTION_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured("ECPOWER_ENCRYPTION_KEYS is required when DJANGO_DEBUG is off.")
    # Development only: a key derived from the development SECRET_KEY.
    ENCRYPTION_KEYS = [base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()]

# --- Background jobs (django-q2) --------------------------------------------------------------
# Embedded default: the database is the broker. Set REDIS_URL to use Redis, and run as many
# `manage.py qcluster` processes (on as many machines) as the load needs.
REDIS_URL = env_str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": "ecpower",
    "workers": env_int("Q_WORKERS", 2),
    "timeout": env_int("Q_TIMEOUT", 3600),
    # retry must stay above timeout, or the broker hands a running task to a second worker.
    "retry": env_int("Q_TIMEOUT", 3600) + 600,
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "label": _("Background jobs"),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
Q_CLUSTER["sync"] = env_bool("Q_SYNC", False)

# --- ecpower ------------------------------------------------------------------------------------
# Connections a recompute uses side by side on PostgreSQL: a store's segments, or many customers'
# (customers_segments_recompute) (docs/performance.md).
SEGMENT_RECOMPUTE_THREADS = env_int("ECPOWER_RECOMPUTE_THREADS", 2)
# The daily recompute and snapshots evaluate only the customers whose verdicts can move; off: every
# customer, every day (slower, the same results; docs/segments.md, docs/metrics.md).
SEGMENTS_INCREMENTAL = env_bool("ECPOWER_SEGMENTS_INCREMENTAL", True)
SNAPSHOTS_INCREMENTAL = env_bool("ECPOWER_SNAPSHOTS_INCREMENTAL", True)
# The segment builder's live count first estimates a rule over orders or line items from a sample of
# about PREVIEW_ESTIMATE_SAMPLE customers when the store has more than PREVIEW_ESTIMATE_ABOVE, then
# shows the exact count (docs/segments.md).
PREVIEW_ESTIMATE_ABOVE = env_int("ECPOWER_PREVIEW_ESTIMATE_ABOVE", 200_000)
PREVIEW_ESTIMATE_SAMPLE = env_int("ECPOWER_PREVIEW_ESTIMATE_SAMPLE", 10_000)
# Cohorts and RFM of a store whose customer ids span more than this (or of a segment of more members) are
# computed in the background and kept: the admin shows the kept table at once (docs/metrics.md).
INSIGHTS_KEPT_ABOVE = env_int("ECPOWER_INSIGHTS_KEPT_ABOVE", 200_000)
# Largest CSV file accepted from an upload (bytes).
CSV_MAX_UPLOAD_BYTES = env_int("ECPOWER_CSV_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
# Largest CSV file accepted to make a list segment (bytes).
LIST_CSV_MAX_UPLOAD_BYTES = env_int("ECPOWER_LIST_CSV_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Shopify (docs/shopify.md) ------------------------------------------------------------------
# Admin API version every request names. Shopify serves a retired version with the oldest supported
# one (same URL, HTTP 200); the answering version is logged and shown on the connection.
SHOPIFY_API_VERSION = env_str("SHOPIFY_API_VERSION", default="2026-10")
# Where a shop's Admin API lives; {shop} is its myshopify domain. The local emulator sets
# http://127.0.0.1:8765/{shop} (make demo does).
SHOPIFY_ADMIN_URL = env_str("SHOPIFY_ADMIN_URL", default="https://{shop}")
# Public app (OAuth install flow) credentials; the secret also verifies webhooks of stores connected
# through it. A custom app's secret is kept on its connection instead.
SHOPIFY_API_KEY = env_str("SHOPIFY_API_KEY", default="")
SHOPIFY_API_SECRET = env_secret("SHOPIFY_API_SECRET", default="")
SHOPIFY_SCOPES = env_str("SHOPIFY_SCOPES", default="read_customers,write_customers,read_orders,read_all_orders,read_products")
# Seconds to connect / to read one response.
SHOPIFY_TIMEOUT = (env_float("SHOPIFY_CONNECT_TIMEOUT", 5.0), env_float("SHOPIFY_READ_TIMEOUT", 60.0))
# Tag operations of one job above which the sync uses a bulk mutation instead of tagsAdd calls.
TAG_SYNC_BULK_THRESHOLD = env_int("ECPOWER_TAG_SYNC_BULK_THRESHOLD", 1000)
# Seconds between polls of a running bulk operation.
SHOPIFY_BULK_POLL_SECONDS = env_float("SHOPIFY_BULK_POLL_SECONDS", 2.0)
# This deployment's public address: OAuth redirects and the links in summary emails.
PUBLIC_URL = env_str("ECPOWER_PUBLIC_URL", default="http://127.0.0.1:8000")

# --- Daily run (docs/metrics.md) ------------------------------------------------------------------
# Seconds a daily run may go without progress before the dispatcher marks it failed and reports it.
PIPELINE_TIMEOUT = env_int("ECPOWER_PIPELINE_TIMEOUT", 1800)
# On PostgreSQL the recompute and the snapshots of a run go side by side on two connections; off: one
# after the other.
PIPELINE_SIDE_BY_SIDE = env_bool("ECPOWER_PIPELINE_SIDE_BY_SIDE", True)

# --- REST API (docs/api.md) -----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "ecpower.api.framework.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["ecpower.api.framework.StorePermission"],
    "DEFAULT_THROTTLE_CLASSES": ["ecpower.api.framework.ApiKeyRateThrottle"],
    # Requests per key (or staff user); over it, 429 with Retry-After.
    "DEFAULT_THROTTLE_RATES": {"api": env_str("ECPOWER_API_RATE", default="1200/min")},
    "DEFAULT_PAGINATION_CLASS": "ecpower.api.framework.CursorPagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ecpower.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ecpower API",
    "DESCRIPTION": "Segments, lists and store data of a Shopify store, for partner tools. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "SyncJobKindEnum": "integrations.models.SyncJobKind.choices",
        "SegmentKindEnum": "segments.models.SegmentKind.choices",
        "MarketingStateEnum": "ecpower.commerce.models.MarketingState",
        "JobStatusEnum": "integrations.models.SyncJobStatus.choices",  # daily runs share it
        "SegmentStatusEnum": "segments.models.SegmentStatus.choices",
        "ListOriginEnum": "segments.models.ListOrigin.choices",
        "OutboundEventEnum": "integrations.models.OutboundEvent.choices",
        "MatchKindEnum": "integrations.models.MatchKind.choices",
        "MappedAttributeEnum": "integrations.models.MappedAttribute.choices",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
