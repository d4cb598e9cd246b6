"""The dashboard and the API docs load nothing from another host: the browser libraries are
vendored under static/vendor/ (scripts/vendor) and Swagger UI comes from
drf-spectacular-sidecar, so the product works offline and where foreign CDNs are unreachable."""

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db

EXTERNAL = re.compile(r"""(src|href)=["']?(https?:)?//""")


@pytest.mark.parametrize("path", ["/api/docs/", "/login/"])
def test_pages_load_their_scripts_and_styles_from_this_server(client, path):
    page = client.get(path).content.decode()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    for asset in re.findall(r"""(?:src|href)=["'](/static/[^"']+)""", page):
        assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset


def test_every_vendored_package_carries_its_licence():
    vendor = Path(settings.BASE_DIR) / "static" / "vendor"
    packages = [folder for folder in vendor.iterdir() if folder.is_dir()]
    assert {p.name.rsplit("-", 1)[0] for p in packages} >= {"htmx.org", "echarts", "tom-select"}
    for folder in packages:
        assert (folder / "LICENSE").stat().st_size > 0, folder
