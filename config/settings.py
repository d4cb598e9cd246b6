"""Settings, all from the environment (DESIGN §5).

With no environment at all the project runs embedded: SQLite in WAL mode and a Celery broker on
the filesystem, so one command on a machine that has only Python brings the whole system up.
`DATABASE_URL` and `REDIS_URL` / `CELERY_BROKER_URL` switch to PostgreSQL and Redis.
"""

import os
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEV_SECRET_KEY = "dev-insecure-0f3c7e1b9a4d-change-me"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or DEV_SECRET_KEY     # empty counts as unset
# No secret key given means a development machine: debug on unless told otherwise.
DEBUG = env_bool("DJANGO_DEBUG", default=SECRET_KEY == DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off (production refuses the "
        "development key)."
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",       # Swagger UI served from here: /api/docs/ works offline
    "django_htmx",
    "django_celery_beat",            # the periodic jobs' schedules, editable at run time
    "core",
    "crm",
    "tagging",
    "lifecycle",
    "campaigns",
    "metrics",
    "wecom",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.RefuseUnstorableInput",
    "core.middleware.PageMethodsOnly",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.audit.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a sign-in refused for too many failures into the lockout answer.
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
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.roles",
                "wecom.context_processors.wecom",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# work_mem for the set-based evaluations (tag rules, lifecycle) on PostgreSQL, per transaction.
DB_HEAVY_WORK_MEM = os.environ.get("DB_HEAVY_WORK_MEM", "64MB")
# Database sessions a full lifecycle evaluation spreads its chunks of customers over (each
# writes its own range in its own transaction; PostgreSQL writes with one core per session).
LIFECYCLE_EVALUATION_SESSIONS = int(os.environ.get("LIFECYCLE_EVALUATION_SESSIONS", "1"))
# Database sessions a full run of the due tag rules spreads them over (rules that read one
# another's tags or share an exclusive group stay in one; tagging.services._lanes).
TAG_RULE_SESSIONS = int(os.environ.get("TAG_RULE_SESSIONS", "2"))
# Days up to today the metrics' stage spells (stages/, flows/) and channel join-day cells
# (channels/) are stored for; a range starting earlier is computed live (docs/METRICS.md).
METRICS_SPELL_DAYS = int(os.environ.get("METRICS_SPELL_DAYS", "400"))
METRICS_CHANNEL_DAYS = int(os.environ.get("METRICS_CHANNEL_DAYS", "400"))
# Segment previews read the segment index (tagging.segment_index), brought up to date every
# SEGMENT_INDEX_MINUTES (0: never; previews are then counted in SQL) and used while younger
# than SEGMENT_INDEX_MAX_AGE_MINUTES.
SEGMENT_INDEX_MINUTES = int(os.environ.get("SEGMENT_INDEX_MINUTES", "10"))
SEGMENT_INDEX_MAX_AGE_MINUTES = int(os.environ.get("SEGMENT_INDEX_MAX_AGE_MINUTES", "30"))
# A build reads again only the customers changed since the last full build, unless more than
# this share of them changed (or it is the first build of the day): then it reads everyone.
SEGMENT_INDEX_FULL_SHARE = float(os.environ.get("SEGMENT_INDEX_FULL_SHARE", "0.2"))
if os.environ.get("DATABASE_URL"):
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ["DATABASE_URL"], conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", 60))
        )
    }
    # PostgreSQL's JIT off for every statement (DB_JIT=server keeps the server's setting): the
    # product's statements each run once, and compiling one cost more than it saved — half of a
    # SOP report, seconds of a rule's run (docs/PERFORMANCE.md §6, "No JIT").
    if DATABASES["default"]["ENGINE"].endswith("postgresql") and os.environ.get(
            "DB_JIT", "off") == "off":
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options["options"] = f"{options.get('options', '')} -c jit=off".strip()
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(DATA_DIR / "crm.sqlite3")),
            "OPTIONS": {
                # WAL lets the web server read while a worker writes; IMMEDIATE takes the write
                # lock at BEGIN, so concurrent writers wait (busy timeout) instead of failing.
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # A file, not memory, so that a real Celery worker started by a test can share it.
            "TEST": {"NAME": str(DATA_DIR / "test-crm.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# WeCom's access token and connection state, shared by the web server and every worker (WeCom
# limits how often a token may be fetched): Redis, else files under DATA_DIR.
CACHES["wecom"] = ({**CACHES["default"], "KEY_PREFIX": "wecom"} if REDIS_URL else
                   {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                    "LOCATION": str(DATA_DIR / "cache" / "wecom")})

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Sign-in lockout (django-axes), for the login page and the API's token endpoint alike: after
# AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair is refused
# (429) for AXES_COOLOFF_MINUTES; a success resets the count.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend",
                           "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT") or "5")
AXES_COOLOFF_TIME = int(os.environ.get("AXES_COOLOFF_MINUTES") or "15") / 60   # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "core.views.locked_out"
AXES_IPWARE_PROXY_COUNT = int(os.environ.get("DJANGO_PROXY_COUNT") or "0")
AXES_VERBOSE = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "metrics:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", _("简体中文")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
                    if not DEBUG else
                    "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 20 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 20 * 1024 * 1024

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # The standard token and session schemes, which also name the audit log's actor.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.access.AuditedTokenAuthentication",
        "core.access.AuditedSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.access.HasRole"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberPagination",
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser", "core.parsers.FormParser",
                               "core.parsers.MultiPartParser"],
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Per user (token or session) and per address for the anonymous; tighter for the token
    # endpoint and for ingestion (events, orders, imports, receipts): 429 with Retry-After.
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle",
                                 "rest_framework.throttling.UserRateThrottle",
                                 "rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("API_THROTTLE_ANON") or "120/min",
        "user": os.environ.get("API_THROTTLE_USER") or "3000/min",
        "token": os.environ.get("API_THROTTLE_TOKEN") or "10/min",
        "ingest": os.environ.get("API_THROTTLE_INGEST") or "1200/min",
    },
    "NUM_PROXIES": int(os.environ.get("DJANGO_PROXY_COUNT") or "0") or None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Private-domain CRM API",
    "DESCRIPTION": "Customers, events, orders, tags, lifecycle stages, outreach and metrics.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "core.schema.document_errors"],
    "ENUM_NAME_OVERRIDES": {
        "CustomerStatusEnum": "crm.models.Customer.Status",
        "OrderStatusEnum": "crm.models.Order.Status",
        "BulkTagJobStatusEnum": "tagging.models.BulkTagJob.Status",
        "SegmentPreviewSourceEnum": ["index", "live"],
        # the name it had before the preview's `source` came (generated clients use it)
        "SourceEnum": "lifecycle.models.TransitionSource",
    },
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Longer than any countdown we use, so Redis does not redeliver a task still waiting.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 3600}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Beat reads the periodic jobs from the database (django-celery-beat), so admins change their
# schedules at run time (/settings/schedules/); config/beat.py holds the defaults they are seeded
# from (core.services.periodic_tasks_sync, run by `seed_periodic_tasks` and when beat starts).
CELERY_BEAT_SCHEDULER = "core.scheduler:SeedingDatabaseScheduler"

# --- Product settings -----------------------------------------------------------------------
OUTREACH_QUIET_HOURS = os.environ.get("OUTREACH_QUIET_HOURS", "22:00-08:00")
# Entering these stages makes a churn warning to-do for the customer's owner.
OUTREACH_CHURN_WARNING_STAGES = env_list("OUTREACH_CHURN_WARNING_STAGES", "value:dormant")
# A customer's first placement in a model starts its SOPs only if they joined this recently
# (a new customer's welcome), never for the existing customers of a first evaluation.
OUTREACH_FIRST_PLACEMENT_HOURS = int(os.environ.get("OUTREACH_FIRST_PLACEMENT_HOURS", "24"))
# CPU seconds one message template may take to render (campaigns.templates); past it the
# message is skipped with the reason, and a template that does so for the sample customer is
# refused at save time.
MESSAGE_TEMPLATE_RENDER_SECONDS = float(os.environ.get("MESSAGE_TEMPLATE_RENDER_SECONDS", "0.5"))
WECOM_CORP_ID = os.environ.get("WECOM_CORP_ID", "")
WECOM_SECRET = os.environ.get("WECOM_SECRET", "")
WECOM_TOKEN = os.environ.get("WECOM_TOKEN", "")
WECOM_ENCODING_AES_KEY = os.environ.get("WECOM_ENCODING_AES_KEY", "")
# Empty (as docker-compose passes an unset variable) is the official base too.
WECOM_API_BASE = (os.environ.get("WECOM_API_BASE")
                  or "https://qyapi.weixin.qq.com/cgi-bin/")
# The application that sends staff reminders (message/send); empty: no reminders in WeCom.
WECOM_AGENT_ID = os.environ.get("WECOM_AGENT_ID", "")
# Hours in which staff get no reminders in WeCom ("HH:MM-HH:MM"; empty = none).
WECOM_STAFF_QUIET_HOURS = os.environ.get("WECOM_STAFF_QUIET_HOURS", "21:00-09:00")
# Days a mass send may wait for the staff member's confirmation before its messages fail.
WECOM_CONFIRM_DAYS = int(os.environ.get("WECOM_CONFIRM_DAYS") or "3")
# Mass messages one customer may receive per day from the corp (WeCom's rule; status 3 of
# get_groupmsg_send_result when exceeded): the frequency guard skips past it when the wecom
# channel sends through WeCom.
WECOM_MASS_SEND_DAILY_QUOTA = int(os.environ.get("WECOM_MASS_SEND_DAILY_QUOTA") or "1")
# Outreach: the backend of each channel (dotted paths); every channel logs to the console unless
# OUTREACH_CHANNEL_BACKENDS says otherwise, e.g. "sms=sms,email=email,wecom=webhook".
_BACKEND_PATHS = {
    "console": "campaigns.backends.ConsoleBackend",
    "email": "campaigns.backends.EmailBackend",
    "sms": "campaigns.backends.SmsBackend",
    "webhook": "campaigns.backends.WebhookBackend",
    "wecom": "wecom.backends.WeComBackend",
}
OUTREACH_BACKENDS = {channel: _BACKEND_PATHS["console"]
                     for channel in ("console", "email", "sms", "webhook", "wecom")}
for _pair in env_list("OUTREACH_CHANNEL_BACKENDS"):
    _channel, _sep, _kind = _pair.partition("=")
    if _kind.strip() not in _BACKEND_PATHS:
        raise ImproperlyConfigured(f"OUTREACH_CHANNEL_BACKENDS: unknown backend {_kind!r} for "
                                   f"{_channel!r}; known: {', '.join(_BACKEND_PATHS)}")
    OUTREACH_BACKENDS[_channel.strip()] = _BACKEND_PATHS[_kind.strip()]
# With WeCom configured, the wecom channel sends through it unless told otherwise above.
if WECOM_CORP_ID and WECOM_SECRET and not any(
        p.partition("=")[0].strip() == "wecom" for p in env_list("OUTREACH_CHANNEL_BACKENDS")):
    OUTREACH_BACKENDS["wecom"] = _BACKEND_PATHS["wecom"]
OUTREACH_WEBHOOK_URL = os.environ.get("OUTREACH_WEBHOOK_URL", "")
OUTREACH_WEBHOOK_SECRET = os.environ.get("OUTREACH_WEBHOOK_SECRET", "")
OUTREACH_WEBHOOK_TIMEOUT = float(os.environ.get("OUTREACH_WEBHOOK_TIMEOUT", "5"))
OUTREACH_SMS_URL = os.environ.get("OUTREACH_SMS_URL", "")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "crm@localhost")
INGEST_MAX_BATCH = 1000
# Facts (events, orders, joins, receipts) dated more than this many minutes ahead of the
# server's clock are refused (core.moments): a client's clock may run a little fast.
INGEST_MAX_FUTURE_MINUTES = int(os.environ.get("INGEST_MAX_FUTURE_MINUTES", "5"))
IMPORT_MAX_ROWS = 100_000

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# --- Transport and browser security ----------------------------------------------------------
# Served over HTTPS (behind a proxy that sets X-Forwarded-Proto) unless DJANGO_SECURE_COOKIES=0
# says the deployment is plain HTTP; `manage.py check --deploy` is clean with the former.
if not DEBUG:
    HTTPS = env_bool("DJANGO_SECURE_COOKIES", True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = HTTPS
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]     # the container's health check speaks HTTP
    # A year of HSTS once on HTTPS (DJANGO_HSTS_SECONDS=0 while trying HTTPS out).
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS") or
                              (31_536_000 if HTTPS else 0))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
SESSION_COOKIE_HTTPONLY = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts and everything else from this origin only —
# no inline script anywhere in the dashboard (htmx, ECharts, tom-select are static files; the
# API docs' script is served from a URL). Inline style attributes stay allowed: progress bars
# and chart libraries set widths and colours that way.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
