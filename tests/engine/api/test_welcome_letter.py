"""Welcome letters: HTML and PDF with the login and a one-time link, never a password; emailed
through a real SMTP server (aiosmtpd) when SMTP is configured."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from engine.api.app import ApiSettings, SmtpSettings, create_app
from engine.api.auth import hash_key
from engine.http_server import HttpServer
from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api


async def _customer(api: Api, admin: httpx.AsyncClient) -> int:
    await create_packages(admin)
    dealer = await api.dealer("Acme Security")
    response = await admin.post(
        "/v1/customers", json=security_request(dealer, imei("49015420323751"))
    )
    assert response.status_code == 201, response.text
    return int(response.json()["customer"]["id"])


SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-test-password"
# The test server takes AUTH without TLS (loopback, no certificate); aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a loopback port that requires AUTH and keeps each envelope."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[bytes, bool]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        self.logins.append((auth_data.login, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(
                self,
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=False,  # loopback test server without a certificate
            ),
            "127.0.0.1",
            0,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _local_smtp(port: int) -> SmtpSettings:
    """The test SMTP server on ``port``, plain, with the accepted credentials."""
    return SmtpSettings(
        host="127.0.0.1", port=port, starttls=False, username=SMTP_USER, password=SMTP_PASSWORD
    )


async def _api_with_smtp(db_pool: asyncpg.Pool, smtp: SmtpSettings) -> tuple[Api, HttpServer]:
    settings = ApiSettings(portal_url="https://portal.example/p", smtp=smtp)
    server = HttpServer(create_app(pool=db_pool, settings=settings), host="127.0.0.1", port=0)
    await server.start()
    harness = Api(f"http://127.0.0.1:{server.port}", db_pool)
    harness.admin_key = await harness.key("admin")
    return harness, server


@pytest.fixture
async def smtp_api(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[Api, SmtpServer]]:
    """The API configured with a local SMTP server that authenticates and records what it receives."""
    smtp = SmtpServer()
    await smtp.start()
    harness, server = await _api_with_smtp(
        db_pool,
        SmtpSettings(
            host="127.0.0.1",
            port=smtp.port,
            starttls=False,
            sender="welcome@example.com",
            username=SMTP_USER,
            password=SMTP_PASSWORD,
        ),
    )
    try:
        yield harness, smtp
    finally:
        await harness.close()
        await server.stop()
        await smtp.stop()


class TestWelcomeLetter:
    async def test_html_has_login_and_one_time_link(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The HTML letter carries the login and a set-up link whose token is stored only hashed."""
        customer = await _customer(api, admin)
        response = await admin.post(f"/v1/customers/{customer}/welcome-letter")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        body = response.text
        assert "alovelace" in body and "Acme Security" in body
        assert "password" not in body.lower().replace("set your password", "").replace(
            "for your password", ""
        )
        token = re.search(r"https://portal\.example/p/setup/([A-Za-z0-9_-]+)", body)
        assert token is not None
        stored = await api.pool.fetch("SELECT token_hash, revoked_at FROM setup_tokens")
        assert [r["token_hash"] for r in stored] == [hash_key(token.group(1))]

    async def test_new_letter_revokes_previous_link(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Only the newest letter's link is valid."""
        customer = await _customer(api, admin)
        await admin.post(f"/v1/customers/{customer}/welcome-letter")
        await admin.post(f"/v1/customers/{customer}/welcome-letter")
        rows = await api.pool.fetch(
            "SELECT revoked_at FROM setup_tokens ORDER BY created_at, token_hash"
        )
        assert sorted(r["revoked_at"] is None for r in rows) == [False, True]

    async def test_pdf(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The PDF letter is a PDF document."""
        customer = await _customer(api, admin)
        response = await admin.post(
            f"/v1/customers/{customer}/welcome-letter", params={"format": "pdf"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pdf"
        assert response.content.startswith(b"%PDF-")

    async def test_not_sent_without_smtp(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Without SMTP settings the letter is not emailed and the answer says why."""
        customer = await _customer(api, admin)
        answer = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
        assert answer == {
            "sent": False,
            "to": "ada@example.com",
            "reason": "SMTP is not configured",
        }

    async def test_sent_with_smtp(self, smtp_api: tuple[Api, SmtpServer]) -> None:
        """With SMTP configured the letter is emailed (after AUTH) as text + HTML with the PDF
        attached: login name and a working one-time link, never a password."""
        api, smtp = smtp_api
        admin = api.client(api.admin_key)
        customer = await _customer(api, admin)
        answer = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
        assert answer == {"sent": True, "to": "ada@example.com", "reason": None}
        assert smtp.logins == [(SMTP_USER.encode(), True)]
        [envelope] = smtp.envelopes
        assert envelope.mail_from == "welcome@example.com"
        assert envelope.rcpt_tos == ["ada@example.com"]
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        assert message["To"] == "ada@example.com"
        assert message["Subject"] == "Welcome to your alarm service"
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None and html is not None
        for part in (text.get_content(), html.get_content()):
            assert "alovelace" in part
            token = re.search(r"https://portal\.example/p/setup/([A-Za-z0-9_-]+)", part)
            assert token is not None
            assert await api.pool.fetchval(
                "SELECT revoked_at IS NULL AND used_at IS NULL FROM setup_tokens WHERE token_hash = $1",
                hash_key(token.group(1)),
            )
        [attachment] = list(message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_content().startswith(b"%PDF-")
        assert SMTP_PASSWORD.encode() not in raw
        # "password" appears only to say the customer sets one through the link.
        words = re.findall(r"[^.]*password[^.]*", html.get_content(), flags=re.IGNORECASE)
        assert words and all("set your password" in w.lower() or "never ask" in w for w in words)

    async def test_smtp_refusal_reported(self, db_pool: asyncpg.Pool) -> None:
        """Wrong SMTP credentials or no server: not sent, and the answer names the SMTP error."""
        smtp = SmtpServer()
        await smtp.start()
        wrong = SmtpSettings(
            host="127.0.0.1", port=smtp.port, starttls=False, username=SMTP_USER, password="wrong"
        )
        api, server = await _api_with_smtp(db_pool, wrong)
        try:
            admin = api.client(api.admin_key)
            customer = await _customer(api, admin)
            answer = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
            assert answer["sent"] is False
            assert answer["reason"] == "SMTP error: SMTPAuthenticationError"
            assert smtp.envelopes == []
            await smtp.stop()
            down = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
            assert down["sent"] is False and down["reason"] == "SMTP error: ConnectionRefusedError"
            # Neither letter left a valid link, and neither revoked one the customer may hold.
            assert (
                await api.pool.fetchval(
                    "SELECT count(*) FROM setup_tokens WHERE revoked_at IS NULL"
                )
                == 0
            )
        finally:
            await api.close()
            await server.stop()

    async def test_a_letter_not_sent_keeps_the_earlier_link(self, db_pool: asyncpg.Pool) -> None:
        """A letter was sent; the next one cannot be (no SMTP server): the first letter's link
        still works (it was revoked before the send was tried), the unsent one's does not."""
        smtp = SmtpServer()
        await smtp.start()
        api, server = await _api_with_smtp(db_pool, _local_smtp(smtp.port))
        try:
            admin = api.client(api.admin_key)
            customer = await _customer(api, admin)
            sent = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
            assert sent["sent"] is True
            first = await api.pool.fetchval("SELECT token_hash FROM setup_tokens")
            await smtp.stop()
            down = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
            assert down["sent"] is False
            valid = await api.pool.fetch(
                "SELECT token_hash FROM setup_tokens WHERE revoked_at IS NULL"
            )
            assert [r["token_hash"] for r in valid] == [first]
        finally:
            await api.close()
            await server.stop()

    async def test_two_letters_sent_at_once_leave_a_working_link(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Two sends at once (a double click) with a slow mail server: both letters go out and
        the newer one's link works (each revoked the other's after sending: neither worked)."""

        class SlowSmtp(SmtpServer):
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                await asyncio.sleep(0.5)
                return await super().handle_DATA(server, session, envelope)

        smtp = SlowSmtp()
        await smtp.start()
        api, server = await _api_with_smtp(db_pool, _local_smtp(smtp.port))
        try:
            admin = api.client(api.admin_key)
            customer = await _customer(api, admin)
            url = f"/v1/customers/{customer}/welcome-letter/send"
            answers = await asyncio.gather(
                api.client(api.admin_key).post(url), api.client(api.admin_key).post(url)
            )
            assert [a.json()["sent"] for a in answers] == [True, True]
            valid = await api.pool.fetch(
                "SELECT token_hash FROM setup_tokens WHERE revoked_at IS NULL AND used_at IS NULL"
            )
            newest = await api.pool.fetchval(
                "SELECT token_hash FROM setup_tokens ORDER BY created_at DESC LIMIT 1"
            )
            assert [r["token_hash"] for r in valid] == [newest]
        finally:
            await api.close()
            await server.stop()
            await smtp.stop()

    async def test_other_dealer_404(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Another dealer cannot get a customer's letter."""
        customer = await _customer(api, admin)
        other = await api.dealer("Other")
        client = api.client(await api.key("dealer", other))
        assert (await client.post(f"/v1/customers/{customer}/welcome-letter")).status_code == 404

    async def test_termination_ends_the_set_up_links(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A terminated customer's unused set-up link stops working, and no new letter (with a
        new link to the portal) is issued for it: 409."""
        customer = await _customer(api, admin)
        assert (await admin.post(f"/v1/customers/{customer}/welcome-letter")).status_code == 200
        terminated = await admin.post(f"/v1/customers/{customer}/terminate", json={"reason": "x"})
        assert terminated.status_code == 200, terminated.text
        valid = await api.pool.fetchval(
            "SELECT count(*) FROM setup_tokens WHERE revoked_at IS NULL AND used_at IS NULL"
        )
        assert valid == 0
        for path in ("welcome-letter", "welcome-letter/send"):
            response = await admin.post(f"/v1/customers/{customer}/{path}")
            assert response.status_code == 409, response.text
            assert response.headers["content-type"] == "application/problem+json"
        assert await api.pool.fetchval("SELECT count(*) FROM setup_tokens") == 1
