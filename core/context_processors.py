from core import access


def roles(request) -> dict:
    """What every dashboard page's layout needs: the signed-in user's role."""
    role = access.user_role(getattr(request, "user", None))
    return {"role": role, "is_admin": role == access.ADMIN,
            "can_see_customers": role in (access.ADMIN, access.OPERATOR)}
