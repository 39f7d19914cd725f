"""The limit on sign-in attempts (audiences.login_limit, django-axes): 30 wrong passwords, then the right one is
refused with the lockout message, on the console's login page and the admin's; the lockout is in the audit log; the
account signs in again after the cool-off or once an admin resets it. Clients are told apart by their real address
behind a trusted proxy, so one client's guesses do not lock out another's sign-in."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.db.models import F
from django.test import Client
from django.urls import reverse

from compliance.models import AuditLogEntry

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's
LOCKED = "Too many failed sign-in attempts."
PROXY, ALICE, BOB = "10.0.0.2", "198.51.100.7", "203.0.113.9"


def _sign_in(client: Client, username: str, password: str, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password})


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def _lock_out(client: Client, username: str, path: str = "/login/") -> list[int]:
    return [_sign_in(client, username, f"wrong-{i}", path).status_code for i in range(30)]


def test_thirty_wrong_passwords_lock_the_account_until_the_cool_off_ends(teammate, settings):
    username = teammate.membership.user.username
    browser = Client()
    # The tenth failure locks the account (LOGIN_FAILURE_LIMIT); the attempts after it are refused unchecked.
    assert _lock_out(browser, username) == [200] * 9 + [429] * 21
    refused = _sign_in(browser, username, PASSWORD)
    assert refused.status_code == 429
    assert LOCKED in refused.content.decode()
    assert not _signed_in(browser)
    # One audit entry, in the account's organisation, when the lockout began.
    entry = AuditLogEntry.objects.get(organisation=teammate.organisation, action="auth.lockout")
    assert (entry.actor_label, entry.target_repr) == ("login limit", username)
    assert (entry.details, entry.ip_address) == ({"username": username, "path": "/login/"}, "127.0.0.1")
    # The cool-off passes (the attempts are as old as it is long): the right password signs in.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME)
    signed_in = _sign_in(browser, username, PASSWORD)
    assert (signed_in.status_code, signed_in["Location"]) == (302, reverse("campaigns:list"))
    assert _signed_in(browser)


def test_an_admin_resets_a_lockout_from_the_admin(teammate):
    username = teammate.membership.user.username
    browser = Client()
    _lock_out(browser, username)
    assert _sign_in(browser, username, PASSWORD).status_code == 429
    root = get_user_model().objects.create_superuser("root@example.com", "root@example.com", "pw")
    admin = Client()
    admin.force_login(root)
    changelist = reverse("admin:axes_accessattempt_changelist")
    assert username in admin.get(changelist).content.decode()
    attempts = [str(pk) for pk in AccessAttempt.objects.values_list("pk", flat=True)]
    confirm = {"action": "delete_selected", "_selected_action": attempts}
    assert admin.post(changelist, confirm).status_code == 200  # the "are you sure?" page
    assert admin.post(changelist, {**confirm, "post": "yes"}).status_code == 302
    assert not AccessAttempt.objects.exists()
    assert _sign_in(browser, username, PASSWORD).status_code == 302
    assert _signed_in(browser)


def test_the_admin_login_is_limited_too(db):
    get_user_model().objects.create_superuser("root@example.com", "root@example.com", "root-password")
    browser = Client()
    admin_login = reverse("admin:login")
    assert _lock_out(browser, "root@example.com", admin_login) == [200] * 9 + [429] * 21
    refused = _sign_in(browser, "root@example.com", "root-password", admin_login)
    assert refused.status_code == 429
    assert LOCKED in refused.content.decode()
    assert not _signed_in(browser)
    # A superuser belongs to no organisation: no organisation's audit log gets the entry (the log line is its record).
    assert not AuditLogEntry.objects.filter(action="auth.lockout").exists()


def test_one_client_guessing_many_accounts_is_locked_out_not_the_others_behind_its_proxy(teammate, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    username = teammate.membership.user.username
    alice = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ALICE)
    codes = [_sign_in(alice, f"guess{i}@example.com", "password").status_code for i in range(10)]
    assert codes == [200] * 9 + [429]
    # Alice's client is locked out, even for an account it knows the password of…
    assert _sign_in(alice, username, PASSWORD).status_code == 429
    # …while Bob, behind the same proxy, signs in to it.
    bob = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=BOB)
    assert _sign_in(bob, username, PASSWORD).status_code == 302
    assert AccessAttempt.objects.filter(ip_address=ALICE).count() == 10


def test_signing_in_to_ones_own_account_does_not_reset_the_count_for_another(teammate, owner):
    victim, own = teammate.membership.user.username, owner.membership.user.username
    attacker = Client()
    assert [_sign_in(attacker, victim, f"guess-{i}").status_code for i in range(9)] == [200] * 9
    assert _sign_in(attacker, own, PASSWORD).status_code == 302
    attacker.logout()
    assert _sign_in(attacker, victim, "guess-9").status_code == 429
    assert _sign_in(Client(REMOTE_ADDR="192.0.2.99"), victim, PASSWORD).status_code == 429


def test_a_few_typos_then_the_right_password_signs_in_and_start_the_count_again(teammate):
    username = teammate.membership.user.username
    browser = Client()
    assert [_sign_in(browser, username, "typo").status_code for _ in range(9)] == [200] * 9
    assert _sign_in(browser, username, PASSWORD).status_code == 302
    browser.logout()
    assert [_sign_in(browser, username, "typo").status_code for _ in range(9)] == [200] * 9
    assert _sign_in(browser, username, PASSWORD).status_code == 302
