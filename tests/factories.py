"""factory_boy factories for crm's models; users get their roles with `roles=[...]`."""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group as Role
from django.utils import timezone
from factory.django import DjangoModelFactory

from crm.models import Channel, Customer, Event, Group, Order

PASSWORD = "correct-horse-battery"


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"staff{n}")
    password = factory.django.Password(PASSWORD)
    is_active = True

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        # The roles come from a migration, but a transactional test's flush removes them:
        # get_or_create keeps every test independent of which ran before.
        if create and extracted:
            for name in extracted:
                self.groups.add(Role.objects.get_or_create(name=name)[0])


class ChannelFactory(DjangoModelFactory):
    class Meta:
        model = Channel
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"qr-{n}")
    name = factory.LazyAttribute(lambda o: f"Channel {o.code}")
    kind = Channel.Kind.QR_CODE


class CustomerFactory(DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"wm-ext-{n:05d}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    owner = factory.SubFactory(UserFactory, roles=["operator"])
    joined_at = factory.LazyFunction(timezone.now)


class GroupFactory(DjangoModelFactory):
    class Meta:
        model = Group

    chat_id = factory.Sequence(lambda n: f"wr-chat-{n}")
    name = factory.Sequence(lambda n: f"Group {n}")
    owner = factory.SubFactory(UserFactory, roles=["operator"])


class OrderFactory(DjangoModelFactory):
    class Meta:
        model = Order

    customer = factory.SubFactory(CustomerFactory)
    source = "youzan"
    external_id = factory.Sequence(lambda n: f"order-{n}")
    amount = Decimal("100.00")
    status = Order.Status.PAID
    placed_at = factory.LazyFunction(timezone.now)


class EventFactory(DjangoModelFactory):
    class Meta:
        model = Event

    customer = factory.SubFactory(CustomerFactory)
    type = Event.Type.MESSAGE_IN
    occurred_at = factory.LazyFunction(timezone.now)
    idempotency_key = factory.Sequence(lambda n: f"event-key-{n}")
    data = factory.LazyFunction(dict)
