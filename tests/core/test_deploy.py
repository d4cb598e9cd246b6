"""Production settings: `manage.py check --deploy` is clean with the production environment,
a secret key is required, and every response carries the Content-Security-Policy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "u7Qz9-kP2vL7rT4wN8yB1xC5mD3fG6hJ0sA2eR9tY4iO8pL1kJ7hG3fD5sA9qW2eR",
              "DJANGO_ALLOWED_HOSTS": "crm.example.com",
              "DJANGO_CSRF_TRUSTED_ORIGINS": "https://crm.example.com"}


def _manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**base, **env}, timeout=120)


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="SQLite adds its own warnings about covering indexes")
def test_check_deploy_is_clean_in_production():
    done = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_refuses_the_development_secret_key():
    done = _manage("check", **{**PRODUCTION, "DJANGO_SECRET_KEY": ""})
    assert done.returncode != 0 and "DJANGO_SECRET_KEY must be set" in done.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/login/", "/api/docs/", "/api/v1/"])
def test_every_response_carries_the_content_security_policy(client, url):
    policy = client.get(url)["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
