"""`{% load people %}` … `{{ user|staff_name }}`: a staff member's name as people write it."""

from django import template

from core.people import staff_name as _staff_name

register = template.Library()


@register.filter
def staff_name(user) -> str:
    return _staff_name(user) if user is not None else ""
