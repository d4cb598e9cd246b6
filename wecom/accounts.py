"""Who WeCom's changes are made as: a system admin that cannot sign in, and the staff accounts
named by WeCom UserIDs (created as operators without a password when first seen)."""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from core import access
from core.services import staff_user_create

SYSTEM_USERNAME = "@wecom"      # a WeCom UserID starts with a letter or digit: never this


def system_user():
    """The actor of WeCom's ingests and syncs."""
    User = get_user_model()
    user = User.objects.filter(username=SYSTEM_USERNAME).first()
    if user is None:
        try:
            with transaction.atomic():
                user = User.objects.create_user(username=SYSTEM_USERNAME, password=None,
                                                first_name="WeCom", is_superuser=True)
        except IntegrityError:          # created a moment ago by a concurrent task
            user = User.objects.get(username=SYSTEM_USERNAME)
    return user


def staff_users_ensure(user_ids) -> dict[str, int]:
    """Account ids by WeCom UserID, creating the missing accounts (staff are a few hundred at
    most; each new one is created once)."""
    User = get_user_model()
    wanted = {u for u in user_ids if u}
    found = dict(User.objects.filter(username__in=wanted).values_list("username", "id"))
    for user_id in sorted(wanted - found.keys()):
        try:
            with transaction.atomic():
                staff_user_create(username=user_id, password=None, role=access.OPERATOR)
        except IntegrityError:
            pass
    if wanted - found.keys():
        found = dict(User.objects.filter(username__in=wanted).values_list("username", "id"))
    return found
