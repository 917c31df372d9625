"""Welcome letters: HTML and PDF with the login and a one-time link, never a password; SMTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

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


class SmtpSink:
    """A minimal SMTP server on a loopback port that keeps each message's DATA."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]


@pytest.fixture
async def smtp_api(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[Api, SmtpSink]]:
    """The API configured with an SMTP server that records what it receives."""
    sink = SmtpSink()
    await sink.start()
    settings = ApiSettings(
        portal_url="https://portal.example/p",
        smtp=SmtpSettings(
            host="127.0.0.1", port=sink.port, starttls=False, sender="welcome@example.com"
        ),
    )
    server = HttpServer(create_app(pool=db_pool, settings=settings), host="127.0.0.1", port=0)
    await server.start()
    harness = Api(f"http://127.0.0.1:{server.port}", db_pool)
    harness.admin_key = await harness.key("admin")
    try:
        yield harness, sink
    finally:
        await harness.close()
        await server.stop()
        assert sink.server is not None
        sink.server.close()


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

    async def test_sent_with_smtp(self, smtp_api: tuple[Api, SmtpSink]) -> None:
        """With SMTP configured the letter is emailed with the link and the PDF attached."""
        api, sink = smtp_api
        admin = api.client(api.admin_key)
        customer = await _customer(api, admin)
        answer = (await admin.post(f"/v1/customers/{customer}/welcome-letter/send")).json()
        assert answer == {"sent": True, "to": "ada@example.com", "reason": None}
        [message] = sink.messages
        assert b"To: ada@example.com" in message
        assert b"https://portal.example/p/setup/" in message
        assert b"application/pdf" in message

    async def test_other_dealer_404(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Another dealer cannot get a customer's letter."""
        customer = await _customer(api, admin)
        other = await api.dealer("Other")
        client = api.client(await api.key("dealer", other))
        assert (await client.post(f"/v1/customers/{customer}/welcome-letter")).status_code == 404
