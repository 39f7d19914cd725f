from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.test import Client

from audiences.access import Actor
from audiences.models import Membership, Organisation, Role
from audiences.services import api_key_create
from campaigns.models import Campaign, CampaignStatus, CampaignType, Variant


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.LazyAttribute(lambda u: u.username)
    password = factory.django.Password("correct-horse-battery")


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.Sequence(lambda n: f"Organisation {n}")
    # Marketing email cannot launch without one (CAN-SPAM); tests that need it empty say so.
    postal_address = "1 Test Street, London EC1A 1AA"


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organisation = factory.SubFactory(OrganisationFactory)
    role = Role.MARKETER


# The least each channel needs before a campaign can launch.
MINIMAL_CONTENT = {
    "email": {"subject": "Hello {{ contact.first_name }}", "html": "<p>Hi {{ contact.first_name }}</p>"},
    "sms": {"body": "Hi {{ contact.first_name }}"},
    "whatsapp": {"body": "Hi {{ contact.first_name }}"},
    "in_app": {"title": "Hi", "body": "News for you"},
    "webhook": {
        "url": "https://hooks.example.com/campaigns",
        "payload_template": '{"id": "{{ contact.external_id }}"}',
    },
}


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign
        skip_postgeneration_save = True

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"Campaign {n}")
    type = CampaignType.SCHEDULED
    status = CampaignStatus.DRAFT
    channels = factory.LazyFunction(lambda: ["email"])
    audience_rules = factory.LazyFunction(lambda: {"field": "email", "op": "exists"})
    trigger_event = factory.LazyAttribute(lambda o: "signup" if o.type == CampaignType.TRIGGERED else "")

    @factory.post_generation
    def variants(obj, create, extracted, **kwargs):
        if create and extracted is not False:
            content = {channel: MINIMAL_CONTENT[channel] for channel in obj.channels}
            Variant.objects.create(campaign=obj, name="A", allocation_percent=100, content=content)


def actor_for(membership: Membership) -> Actor:
    return Actor(organisation=membership.organisation, role=membership.role, user=membership.user)


def issue_key(organisation: Organisation, role: str = Role.MARKETER, name: str = "test key") -> str:
    actor = Actor(organisation=organisation, role=Role.ADMIN, system="tests")
    return api_key_create(actor=actor, name=name, role=role).secret


def console_client(persona: object) -> Client:
    """A browser-like client signed in as the persona's user, for console pages (form posts, HTML)."""
    client = Client()
    client.force_login(persona.membership.user)  # type: ignore[attr-defined]
    return client
