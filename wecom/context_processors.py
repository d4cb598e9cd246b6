from wecom.selectors import wecom_enabled


def wecom(request) -> dict:
    """Whether the WeCom pages exist (WeCom configured), for the navigation."""
    return {"wecom_enabled": wecom_enabled()}
