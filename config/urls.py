from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.decorators.cache import cache_control
from django.views.i18n import JavaScriptCatalog
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from campaigns import api as campaigns_api
from core.api import AuditViewSet, ConditionFieldsView
from core.views import healthz
from crm import api as crm_api
from lifecycle import api as lifecycle_api
from tagging import api as tagging_api

router = DefaultRouter()
router.register("customers", crm_api.CustomerViewSet, basename="customer")
router.register("events", crm_api.EventViewSet, basename="event")
router.register("orders", crm_api.OrderViewSet, basename="order")
router.register("channels", crm_api.ChannelViewSet, basename="channel")
router.register("groups", crm_api.GroupViewSet, basename="group")
router.register("tag-groups", tagging_api.TagGroupViewSet, basename="tag-group")
router.register("tags", tagging_api.TagViewSet, basename="tag")
router.register("tag-rules", tagging_api.TagRuleViewSet, basename="tag-rule")
router.register("segments", tagging_api.SegmentViewSet, basename="segment")
router.register("bulk-tag-jobs", tagging_api.BulkTagJobViewSet, basename="bulk-tag-job")
router.register("stage-models", lifecycle_api.StageModelViewSet, basename="stage-model")
router.register("sops", campaigns_api.SopViewSet, basename="sop")
router.register("campaigns", campaigns_api.CampaignViewSet, basename="campaign")
router.register("messages", campaigns_api.MessageViewSet, basename="message")
router.register("tasks", campaigns_api.OperatorTaskViewSet, basename="task")
router.register("audit", AuditViewSet, basename="audit")

urlpatterns = [
    path("api/v1/auth/token/", crm_api.TokenView.as_view(), name="api-token"),
    path("api/v1/customers/bulk-tag/", tagging_api.BulkTagView.as_view(), name="bulk-tag"),
    path("api/v1/customers/<int:pk>/tags/", tagging_api.CustomerTagsView.as_view(),
         name="customer-tags"),
    path("api/v1/customers/<int:pk>/stage/", lifecycle_api.CustomerStageView.as_view(),
         name="customer-stage"),
    path("api/v1/templates/preview/", campaigns_api.TemplatePreviewView.as_view(),
         name="template-preview"),
    path("api/v1/outreach-policy/", campaigns_api.PolicyView.as_view(), name="outreach-policy"),
    path("api/v1/conditions/fields/", ConditionFieldsView.as_view(), name="condition-fields"),
    path("api/v1/metrics/", include("metrics.urls")),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script from a URL: no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("healthz/", healthz, name="healthz"),
    path("wecom/", include("wecom.urls")),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/", include("config.urls_settings")),
    path("i18n/", include("django.conf.urls.i18n")),
    # The dashboard scripts' words (gettext in JavaScript), per language (`?l=` in the URL,
    # so a browser keeps one copy per language for an hour; not kept on the server, so a
    # deploy's new words are served at once).
    path("jsi18n/", cache_control(max_age=3600)(JavaScriptCatalog.as_view()),
         name="javascript-catalog"),
    path("", include("tagging.urls_segments")),
    path("", include("campaigns.urls")),
    path("", include("tagging.urls")),
    path("", include("lifecycle.urls")),
    path("", include("metrics.urls_dashboard")),
    path("", include("crm.urls")),
]

handler400 = "core.views.bad_request"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
