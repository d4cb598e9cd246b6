from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from core.views import healthz
from crm import api as crm_api

router = DefaultRouter()
router.register("customers", crm_api.CustomerViewSet, basename="customer")
router.register("events", crm_api.EventViewSet, basename="event")
router.register("orders", crm_api.OrderViewSet, basename="order")
router.register("channels", crm_api.ChannelViewSet, basename="channel")
router.register("groups", crm_api.GroupViewSet, basename="group")

urlpatterns = [
    path("api/v1/auth/token/", crm_api.TokenView.as_view(), name="api-token"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz/", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("crm.urls")),
]
