"""The welcome letter: login name and a one-time set-up link, as HTML and PDF; emailed when SMTP
is configured. Never a password: the customer sets one through the link.

Each letter issues a fresh set-up token (stored hashed, like API keys) and revokes the unused
earlier ones, so only the newest letter's link works.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from string import Template
from typing import Any, Literal

import msgspec
import structlog
from litestar import Response, post
from litestar.datastructures import State

from engine.api import audit
from engine.api.app_settings import ApiSettings, SmtpSettings
from engine.api.auth import Caller, hash_key, require_write
from engine.api.customer_model import Customer
from engine.api.customer_store import fetch_customer
from engine.api.problems import ProblemError

log = structlog.get_logger("engine.api.welcome_letter")

_HTML = Template("""<!doctype html>
<html lang="$language"><head><meta charset="utf-8"><title>Welcome to your alarm service</title></head>
<body style="font-family: sans-serif; max-width: 40em">
<h1>Welcome, $name</h1>
<p>Your $account_type account with $dealer is ready.</p>
<table>
<tr><th align="left">Login name</th><td><strong>$login</strong></td></tr>
<tr><th align="left">Service package</th><td>$package</td></tr>
</table>
<p>Set your password with this one-time link (valid until $expires):</p>
<p><a href="$link">$link</a></p>
<p>You can sign in once your alarm panel has communicated with us for the first time.</p>
<p>We will never ask for your password by email or phone.</p>
</body></html>
""")


class Letter(msgspec.Struct, frozen=True, kw_only=True):
    """What a letter says (the link holds the one-time token)."""

    name: str
    email: str
    language: str
    account_type: str
    dealer: str
    login: str
    package: str
    link: str
    expires: datetime


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the letter was emailed, to whom, and why not."""

    sent: bool
    to: str
    reason: str | None = None


def render_html(letter: Letter) -> str:
    """The letter as an HTML page (every value escaped)."""
    return _HTML.substitute(
        language=html.escape(letter.language),
        name=html.escape(letter.name),
        account_type=html.escape(letter.account_type.replace("_", " ")),
        dealer=html.escape(letter.dealer),
        login=html.escape(letter.login),
        package=html.escape(letter.package),
        link=html.escape(letter.link),
        expires=letter.expires.strftime("%Y-%m-%d %H:%M UTC"),
    )


def render_pdf(letter: Letter) -> bytes:
    """The letter as a one-page PDF (core fonts: characters outside Latin-1 become '?')."""
    from fpdf import FPDF  # noqa: PLC0415 - imported on use: keeps the API import light

    def text(value: str) -> str:
        return value.encode("latin-1", "replace").decode("latin-1")

    pdf = FPDF(format="Letter")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, text(f"Welcome, {letter.name}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=12)
    lines = [
        f"Your {letter.account_type.replace('_', ' ')} account with {letter.dealer} is ready.",
        "",
        f"Login name: {letter.login}",
        f"Service package: {letter.package}",
        "",
        f"Set your password with this one-time link (valid until {letter.expires:%Y-%m-%d %H:%M} UTC):",
        letter.link,
        "",
        "You can sign in once your alarm panel has communicated with us for the first time.",
        "We will never ask for your password by email or phone.",
    ]
    for line in lines:
        pdf.multi_cell(0, 7, text(line), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _send_blocking(smtp: SmtpSettings, letter: Letter, html_body: str, pdf: bytes) -> None:
    message = EmailMessage()
    message["Subject"] = "Welcome to your alarm service"
    message["From"] = smtp.sender
    message["To"] = letter.email
    message.set_content(f"Your login name is {letter.login}. Set your password here: {letter.link}")
    message.add_alternative(html_body, subtype="html")
    message.add_attachment(
        pdf, maintype="application", subtype="pdf", filename="welcome-letter.pdf"
    )
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username and smtp.password:
            client.login(smtp.username, smtp.password)
        client.send_message(message)


# Only the links issued before this one: of two letters sent at once, the one sent first must
# not revoke the newer one's link (each revoking the other left the customer none that works).
_REVOKE_EARLIER = (
    "UPDATE setup_tokens SET revoked_at = now() "
    "WHERE customer_id = $1 AND used_at IS NULL AND revoked_at IS NULL "
    "AND (created_at, token_hash) < "
    "(SELECT created_at, token_hash FROM setup_tokens WHERE token_hash = $2)"
)


async def _issue(
    state: State, caller: Caller, customer_id: int, action: str, *, revoke_earlier: bool = True
) -> tuple[Letter, str]:
    """A letter for the customer with a fresh one-time set-up token, and the token's hash.
    ``revoke_earlier``: the unused earlier links stop working now (else the caller decides)."""
    settings: ApiSettings = state.api_settings
    token = secrets.token_urlsafe(32)
    token_hash = hash_key(token)
    expires = datetime.now(UTC) + timedelta(hours=settings.setup_link_ttl_h)
    async with state.pool.acquire() as conn, conn.transaction():
        customer: Customer = await fetch_customer(conn, caller, customer_id, for_update=True)
        if customer.status == "terminated":
            raise ProblemError(
                409, "Conflict", "the customer is terminated: it gets no portal set-up link"
            )
        await conn.execute(
            "INSERT INTO setup_tokens (token_hash, customer_id, expires_at) VALUES ($1, $2, $3)",
            token_hash,
            customer_id,
            expires,
        )
        if revoke_earlier:
            await conn.execute(_REVOKE_EARLIER, customer_id, token_hash)
        dealer = await conn.fetchval("SELECT name FROM dealers WHERE id = $1", customer.dealer_id)
        await audit.record(
            conn,
            caller,
            action=action,
            resource="customer",
            resource_id=customer_id,
            dealer_id=customer.dealer_id,
            after={"setup_link_expires": expires.isoformat()},
        )
    info: dict[str, Any] = customer.document.get("customer") or {}
    package: dict[str, Any] = customer.document.get("package") or {}
    letter = Letter(
        name=f"{info.get('first_name', '')} {info.get('last_name', '')}".strip(),
        email=str(info.get("email", "")),
        language=str(info.get("language", "en")),
        account_type=customer.account_type,
        dealer=str(dealer),
        login=customer.login_name,
        package=" + ".join(
            [str(package.get("base") or "")] + [str(a) for a in package.get("addons") or []]
        ),
        link=f"{settings.portal_url.rstrip('/')}/setup/{token}",
        expires=expires,
    )
    return letter, token_hash


@post(
    "/customers/{customer_id:int}/welcome-letter",
    summary="Render the welcome letter (HTML or PDF)",
    status_code=200,
    response_description="the letter, text/html or application/pdf",
)
async def welcome_letter(
    state: State, caller: Caller, customer_id: int, format: Literal["html", "pdf"] = "html"
) -> Response[bytes]:
    """Issues a new one-time set-up link (earlier unused links stop working)."""
    require_write(caller)
    letter, _ = await _issue(state, caller, customer_id, "welcome_letter")
    if format == "pdf":
        pdf = await asyncio.to_thread(render_pdf, letter)
        return Response(pdf, media_type="application/pdf")
    return Response(render_html(letter).encode(), media_type="text/html; charset=utf-8")


@post(
    "/customers/{customer_id:int}/welcome-letter/send",
    summary="Email the welcome letter",
    status_code=200,
)
async def send_welcome_letter(state: State, caller: Caller, customer_id: int) -> SendResult:
    """Emails HTML with the PDF attached when SMTP is configured; otherwise skipped (and logged).

    The earlier unused links stop working only once this letter is sent: a letter that could
    not be sent leaves the customer the link they may already have (its own is revoked)."""
    require_write(caller)
    settings: ApiSettings = state.api_settings
    letter, token_hash = await _issue(
        state, caller, customer_id, "welcome_letter_send", revoke_earlier=False
    )
    if settings.smtp is None:
        await _revoke_own(state, token_hash)
        log.info("welcome_letter_not_sent", customer=customer_id, reason="smtp_not_configured")
        return SendResult(sent=False, to=letter.email, reason="SMTP is not configured")
    pdf = await asyncio.to_thread(render_pdf, letter)
    try:
        await asyncio.to_thread(_send_blocking, settings.smtp, letter, render_html(letter), pdf)
    except (OSError, smtplib.SMTPException) as exc:
        await _revoke_own(state, token_hash)
        log.warning("welcome_letter_send_failed", customer=customer_id, error=type(exc).__name__)
        return SendResult(sent=False, to=letter.email, reason=f"SMTP error: {type(exc).__name__}")
    await state.pool.execute(_REVOKE_EARLIER, customer_id, token_hash)
    log.info("welcome_letter_sent", customer=customer_id)
    return SendResult(sent=True, to=letter.email)


async def _revoke_own(state: State, token_hash: str) -> None:
    """The link of a letter that was not sent: nobody has it, it must not stay valid."""
    await state.pool.execute(
        "UPDATE setup_tokens SET revoked_at = now() WHERE token_hash = $1", token_hash
    )


WELCOME_LETTER_HANDLERS = [welcome_letter, send_welcome_letter]


def document_letter_responses(openapi: Any) -> None:
    """The letter endpoint answers text/html or application/pdf (not JSON): say so in the document."""
    from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Schema  # noqa: PLC0415

    item = (openapi.paths or {}).get("/v1/customers/{customer_id}/welcome-letter")
    if item is None or item.post is None or item.post.responses is None:
        return
    body = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]
    item.post.responses["200"] = OpenAPIResponse(
        description="the letter",
        content={
            "text/html": OpenAPIMediaType(schema=body),
            "application/pdf": OpenAPIMediaType(schema=body),
        },
    )
