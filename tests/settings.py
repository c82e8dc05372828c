"""Settings for the test suite: the project's settings plus test-only overrides.

The database comes from DATABASE_URL (``make test`` points it at PostgreSQL when one answers on
127.0.0.1:5432, else SQLite).
"""

import atexit
import os
import shutil
import tempfile

# Tests run the production code path whatever a local .env says.
os.environ["ECPOWER_ENV_FILE"] = os.devnull
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("ECPOWER_ENCRYPTION_KEYS", "Q2VpdTRxTmhWQ2o3bVZ1c1JXaE1mN3NxY0Y0eGJ6UlE=")

from ecpower.settings import *  # noqa: F403
from ecpower.settings import Q_CLUSTER

LANGUAGE_CODE = "en"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
MEDIA_ROOT = tempfile.mkdtemp(prefix="ecpower-test-media-")
_MEDIA_OWNER = os.getpid()  # a forked worker inherits this hook; only the process that made the folder removes it
atexit.register(lambda: os.getpid() == _MEDIA_OWNER and shutil.rmtree(MEDIA_ROOT, ignore_errors=True))
Q_CLUSTER = {**Q_CLUSTER, "sync": True}
