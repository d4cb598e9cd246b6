"""How staff are named on screen and in messages."""

import re

# Han characters (CJK Unified Ideographs and their extensions A and compatibility block).
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def staff_name(user) -> str:
    """A staff member's name as people write it: 王芳 (family name first, no space) when the
    name is Chinese, "Fang Wang" otherwise; the username when no name is set. Django's
    `get_full_name` always puts the first name first with a space (芳 王)."""
    first, last = (user.first_name or "").strip(), (user.last_name or "").strip()
    if first and last and (_HAN.search(first) or _HAN.search(last)):
        return f"{last}{first}"
    return " ".join(part for part in (first, last) if part) or user.get_username()
