"""REST API of crm (DESIGN §4): parse, call a service or selector, respond."""


from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import PermissionDenied
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core import access
from core.exceptions import ApplicationError
from core.filters import MomentFilter
from core.pagination import PageNumberPagination
from core.parsers import FormParser, JSONParser, MultiPartParser
from core.serializers import MomentField
from crm import extensions, selectors, services
from crm.models import Channel, Customer, CustomerNote, Event, Group, Order

User = get_user_model()


# --- Serializers ----------------------------------------------------------------------------

class CustomerSerializer(serializers.ModelSerializer):
    channel = serializers.SlugRelatedField(
        slug_field="code", queryset=Channel.objects.all(), required=False, allow_null=True,
        help_text=gettext_lazy("Channel code."))
    owner = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True), required=False,
        help_text=gettext_lazy("Staff username; operators may only name themselves."))
    referred_by = serializers.SlugRelatedField(slug_field="external_id", read_only=True,
                                               allow_null=True)
    joined_at = MomentField(
        required=False, help_text=gettext_lazy("When the customer entered the private domain."))
    tags = serializers.SerializerMethodField()
    stages = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = [
            "id", "external_id", "name", "phone", "gender", "city", "channel", "owner",
            "joined_at", "status", "opted_out", "attributes", "tags", "stages",
            "orders_count", "total_spent", "first_order_at", "last_order_at", "last_active_at",
            "referred_by", "created_at", "updated_at",
        ]
        read_only_fields = [
            "orders_count", "total_spent", "first_order_at", "last_order_at", "last_active_at",
            "created_at", "updated_at",
        ]

    def validate_attributes(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError(_("must be an object"))
        return value

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data.update(extensions.extension_values(instance))
        return data

    def get_tags(self, obj) -> list[str]:  # filled by to_representation from extensions
        return []

    def get_stages(self, obj) -> dict[str, str]:
        return {}


class ChannelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Channel
        fields = ["id", "code", "name", "kind", "cost", "description", "active", "created_at"]
        read_only_fields = ["created_at"]


class GroupSerializer(serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", required=False, allow_null=True,
                                         queryset=User.objects.filter(is_active=True))
    member_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Group
        fields = ["id", "chat_id", "name", "owner", "notice", "member_count", "created_at"]
        read_only_fields = ["created_at"]


class OrderItemSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    category = serializers.CharField()
    quantity = serializers.IntegerField()
    price = serializers.DecimalField(max_digits=14, decimal_places=2)


class OrderSerializer(serializers.ModelSerializer):
    customer = serializers.SlugRelatedField(slug_field="external_id", read_only=True)
    items = OrderItemSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = ["id", "customer", "external_id", "source", "amount", "status", "placed_at",
                  "refunded_at", "items", "created_at"]


class EventSerializer(serializers.ModelSerializer):
    customer = serializers.SlugRelatedField(slug_field="external_id", read_only=True)

    class Meta:
        model = Event
        fields = ["id", "customer", "type", "occurred_at", "idempotency_key", "data",
                  "received_at"]


class NoteSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                          allow_null=True)

    class Meta:
        model = CustomerNote
        fields = ["id", "text", "author", "created_at"]
        read_only_fields = ["author", "created_at"]


class TimelineEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.CharField(help_text=gettext_lazy("event, order, tag, stage, message, …"))
    type = serializers.CharField()
    title = serializers.CharField()
    detail = serializers.CharField(default="", help_text=gettext_lazy(
        "Who, why or what it said, as a sentence; may be empty."))
    data = serializers.DictField()


REPORT_SCHEMA = inline_serializer("IngestReport", {
    "accepted": serializers.IntegerField(),
    "duplicates": serializers.IntegerField(),
    "rejected": serializers.ListField(child=inline_serializer("Rejection", {
        "index": serializers.IntegerField(), "message": serializers.CharField()})),
})
EVENT_IN = inline_serializer("EventIn", {
    "customer": serializers.CharField(help_text=gettext_lazy("The customer's external_id.")),
    "type": serializers.ChoiceField(choices=Event.Type.choices),
    "occurred_at": serializers.DateTimeField(required=False),
    "idempotency_key": serializers.CharField(),
    "data": serializers.DictField(required=False),
})
ORDER_IN = inline_serializer("OrderIn", {
    "customer": serializers.CharField(help_text=gettext_lazy("The customer's external_id.")),
    "external_id": serializers.CharField(),
    "source": serializers.CharField(),
    "amount": serializers.DecimalField(max_digits=14, decimal_places=2),
    "status": serializers.ChoiceField(choices=Order.Status.choices, required=False),
    "placed_at": serializers.DateTimeField(required=False),
    "items": OrderItemSerializer(many=True, required=False),
})


def report_response(report: services.IngestReport, *, single: bool) -> Response:
    """The report, always; a 400 when nothing of the request could be stored."""
    body = report.as_dict()
    if report.rejected and not report.accepted and not report.duplicates:
        first = report.rejected[0]
        prefix = "" if single else _("item %(index)d: ") % {"index": first["index"]}
        return Response({"message": prefix + first["message"], **body},
                        status=status.HTTP_400_BAD_REQUEST)
    return Response(body)


# --- Customers ------------------------------------------------------------------------------

class CustomerFilter(filters.FilterSet):
    channel = filters.CharFilter(field_name="channel__code", help_text="Channel code.")
    owner = filters.CharFilter(field_name="owner__username", help_text="Staff username.")
    status = filters.ChoiceFilter(choices=Customer.Status.choices)
    gender = filters.ChoiceFilter(choices=Customer.Gender.choices)
    city = filters.CharFilter()
    opted_out = filters.BooleanFilter()
    joined_after = MomentFilter(field_name="joined_at", lookup_expr="gte")
    joined_before = MomentFilter(field_name="joined_at", lookup_expr="lt")
    search = filters.CharFilter(method="filter_search",
                                help_text="Name, external_id or phone.")
    ordering = filters.OrderingFilter(fields=(
        "joined_at", "last_active_at", "total_spent", "orders_count", "name", "id"))

    class Meta:
        model = Customer
        fields = []

    def filter_search(self, queryset, name, value):
        return selectors.customer_search(queryset, value)


class ExtensionFilterBackend:
    """The filters other apps add to the customer list (`tag`, `segment`, `stage`, …), each
    repeatable, applied through `selectors.customer_list`'s extension filters."""

    def filter_queryset(self, request, queryset, view):
        values = {name: request.query_params.getlist(name)
                  for name, _e in extensions.customer_filters.items()
                  if name in request.query_params}
        return selectors.customer_filter_extensions(queryset, values) if values else queryset

    def get_schema_operation_parameters(self, view):
        return [{"name": name, "required": False, "in": "query", "description": ext.help_text,
                 "schema": {"type": "array", "items": {"type": "string"}}, "explode": True,
                 "style": "form"} for name, ext in extensions.customer_filters.items()]


class CustomerViewSet(access.IngestThrottled, viewsets.ModelViewSet):
    """Customers the signed-in user may see: operators their own, admins all."""

    ingest_actions = frozenset({"import_csv"})
    serializer_class = CustomerSerializer
    permission_classes = [access.CustomerDataPermission]
    filterset_class = CustomerFilter
    filter_backends = [filters.DjangoFilterBackend, ExtensionFilterBackend]

    def get_queryset(self):
        return selectors.customer_list(user=self.request.user)

    def perform_create(self, serializer):
        serializer.instance = services.customer_create(actor=self.request.user,
                                                       **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.customer_update(
            actor=self.request.user, customer=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        services.customer_delete(customer=instance)

    @extend_schema(responses={200: OpenApiResponse(description=(
        "Everything held about the customer: profile, events, orders, notes, groups, tags, "
        "stages, messages, to-dos."))})
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """A personal-data request (PIPL): everything held about the customer, as JSON
        (admins; audited)."""
        if not access.is_admin(request.user):
            raise PermissionDenied(_("Only admins handle personal-data requests."))
        customer = self.get_object()
        return Response(services.customer_personal_data(customer=customer,
                                                        actor=request.user))

    @extend_schema(request=None, responses={200: OpenApiResponse(description=(
        "What was erased: rows changed per kind."))})
    @action(detail=True, methods=["post"])
    def erase(self, request, pk=None):
        """Erase the customer's personal data on request (PIPL), keeping anonymous aggregates
        (admins; audited). A later import or sync does not bring them back; adding the brand
        again does."""
        if not access.is_admin(request.user):
            raise PermissionDenied(_("Only admins handle personal-data requests."))
        customer = self.get_object()
        return Response({"erased": services.customer_erase(customer=customer,
                                                           actor=request.user)})

    @extend_schema(
        parameters=[OpenApiParameter("page", int), OpenApiParameter("page_size", int)],
        responses=inline_serializer("Timeline", {
            "count": serializers.IntegerField(),
            "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True),
            "results": TimelineEntrySerializer(many=True)}))
    @action(detail=True, methods=["get"])
    def timeline(self, request, pk=None):
        """Events, orders, tag changes, stage transitions and messages, newest first."""
        customer = self.get_object()
        paginator = PageNumberPagination()
        page_size = paginator.get_page_size(request) or paginator.page_size
        try:
            page = max(1, int(request.query_params.get("page", 1)))
        except ValueError:
            raise ApplicationError(_("page: must be a whole number"))
        data = selectors.customer_timeline(customer_id=customer.pk, page=page,
                                           page_size=page_size)
        base = request.build_absolute_uri(request.path)
        more = page * page_size < data["count"]
        return Response({
            "count": data["count"],
            "next": f"{base}?page={page + 1}&page_size={page_size}" if more else None,
            "previous": f"{base}?page={page - 1}&page_size={page_size}" if page > 1 else None,
            "results": TimelineEntrySerializer(data["results"], many=True).data,
        })

    @extend_schema(methods=["get"], responses=NoteSerializer(many=True))
    @extend_schema(methods=["post"], request=inline_serializer("NoteIn", {
        "text": serializers.CharField()}), responses={201: NoteSerializer})
    @action(detail=True, methods=["get", "post"])
    def notes(self, request, pk=None):
        """Operators' notes on the customer, newest first; POST `{"text": …}` adds one."""
        customer = self.get_object()
        if request.method == "POST":
            text = request.data.get("text") if isinstance(request.data, dict) else None
            note = services.note_add(customer=customer, author=request.user, text=text)
            return Response(NoteSerializer(note).data, status=status.HTTP_201_CREATED)
        page = self.paginate_queryset(selectors.customer_notes(customer=customer))
        return self.get_paginated_response(NoteSerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": inline_serializer("CustomerImport", {
            "file": serializers.FileField()}), "text/csv": OpenApiTypes.STR},
        responses={200: REPORT_SCHEMA, 400: REPORT_SCHEMA})
    @action(detail=False, methods=["post"], url_path="import",
            parser_classes=[MultiPartParser, FormParser, JSONParser])
    def import_csv(self, request):
        """Create or update customers from a CSV file (UTF-8, with or without BOM; the header
        row names the fields: external_id, name, phone, gender, city, channel, owner,
        joined_at, status, opted_out, attributes.<key>)."""
        upload = request.FILES.get("file")
        if upload is None:
            raise ApplicationError(_("file: upload the CSV as the multipart field 'file'."))
        report = services.customers_import(content=upload.read(), actor=request.user)
        return report_response(report, single=False)


# --- Ingestion ------------------------------------------------------------------------------

class EventFilter(filters.FilterSet):
    customer = filters.CharFilter(field_name="customer__external_id")
    type = filters.MultipleChoiceFilter(choices=Event.Type.choices)
    occurred_after = MomentFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_before = MomentFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = Event
        fields = []


class EventViewSet(access.IngestThrottled, mixins.ListModelMixin, viewsets.GenericViewSet):
    """POST one event or a list of up to 1000; GET lists stored events."""

    serializer_class = EventSerializer
    permission_classes = [access.CustomerDataPermission]
    filterset_class = EventFilter

    def get_queryset(self):
        return selectors.event_list(user=self.request.user)

    @extend_schema(request=EVENT_IN, responses={200: REPORT_SCHEMA, 400: REPORT_SCHEMA},
                   description="Accepts one event object or a list of at most 1000. A repeated "
                               "`idempotency_key` is counted in `duplicates` and stored once.")
    def create(self, request):
        report = services.events_ingest(items=request.data, actor=request.user)
        return report_response(report, single=isinstance(request.data, dict))


class OrderFilter(filters.FilterSet):
    customer = filters.CharFilter(field_name="customer__external_id")
    source = filters.CharFilter()
    status = filters.ChoiceFilter(choices=Order.Status.choices)
    placed_after = MomentFilter(field_name="placed_at", lookup_expr="gte")
    placed_before = MomentFilter(field_name="placed_at", lookup_expr="lt")

    class Meta:
        model = Order
        fields = []


class OrderViewSet(access.IngestThrottled, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   viewsets.GenericViewSet):
    """POST one order or a list of up to 1000; the same order again with status `refunded`
    records the refund."""

    serializer_class = OrderSerializer
    permission_classes = [access.CustomerDataPermission]
    filterset_class = OrderFilter

    def get_queryset(self):
        return selectors.order_list(user=self.request.user)

    @extend_schema(request=ORDER_IN, responses={200: REPORT_SCHEMA, 400: REPORT_SCHEMA})
    def create(self, request):
        report = services.orders_ingest(items=request.data, actor=request.user)
        return report_response(report, single=isinstance(request.data, dict))


# --- Channels and groups --------------------------------------------------------------------

class ChannelViewSet(viewsets.ModelViewSet):
    """Acquisition channels; everyone reads, admins change."""

    serializer_class = ChannelSerializer
    permission_classes = [access.AdminWritePermission]
    queryset = Channel.objects.all()
    filterset_fields = ["code", "kind", "active"]

    def perform_create(self, serializer):
        serializer.instance = services.channel_save(channel=None, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.channel_save(channel=serializer.instance,
                                                    **serializer.validated_data)

    def perform_destroy(self, instance):
        services.channel_delete(channel=instance)


class GroupViewSet(viewsets.ModelViewSet):
    """Customer groups (社群); membership follows `group_joined` / `group_left` events."""

    serializer_class = GroupSerializer
    permission_classes = [access.CustomerDataPermission]
    filterset_fields = ["chat_id"]

    def get_queryset(self):
        return selectors.group_list(user=self.request.user)

    def perform_create(self, serializer):
        group = services.group_save(actor=self.request.user, group=None,
                                    **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=group.pk)   # with its member count

    def perform_update(self, serializer):
        group = services.group_save(actor=self.request.user, group=serializer.instance,
                                    **serializer.validated_data)
        serializer.instance = self.get_queryset().get(pk=group.pk)

    def perform_destroy(self, instance):
        services.group_delete(actor=self.request.user, group=instance)

    @extend_schema(responses=CustomerSerializer(many=True))
    @action(detail=True, methods=["get"])
    def members(self, request, pk=None):
        """Current members of the group that you may see."""
        queryset = selectors.group_members(user=request.user, group=self.get_object())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(CustomerSerializer(page, many=True).data)


class TokenView(APIView):
    """Exchange a username and password for an API token (throttled tightly; a username that
    fails too often from one address is locked out for a while — django-axes)."""

    permission_classes = []
    authentication_classes = []
    throttle_scope = "token"

    @extend_schema(
        request=inline_serializer("TokenIn", {"username": serializers.CharField(),
                                              "password": serializers.CharField()}),
        responses={200: inline_serializer("TokenOut", {"token": serializers.CharField()}),
                   400: OpenApiResponse(description="Wrong username or password.")})
    def post(self, request):
        from rest_framework.authtoken.models import Token
        from rest_framework.authtoken.serializers import AuthTokenSerializer

        # Django's own request: django-axes marks a lockout on it for its middleware to answer.
        serializer = AuthTokenSerializer(data=request.data,
                                         context={"request": request._request})
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        # A sign-in like the login page's: django-axes forgets the failures, last_login moves.
        user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        token, _created = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})
