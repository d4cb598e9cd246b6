"""Dashboard pages for operators and admins; thin over the selectors."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def home(request):
    return render(request, "dashboard/home.html")
