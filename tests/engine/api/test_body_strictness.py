"""A request body is taken as the client meant it or refused: sent as JSON (415 otherwise), of
the types its fields declare (no 1 for true), each key once (real app on uvicorn, real
PostgreSQL)."""

from __future__ import annotations

import json

import httpx

from tests.engine.api.catalog_setup import imei, security_request
from tests.engine.api.conftest import Api, problem_rules

PROBLEM = "application/problem+json"
DEALER = b'{"name": "Acme"}'


class TestContentType:
    async def test_a_body_not_sent_as_json_is_a_415(self, admin: httpx.AsyncClient) -> None:
        """A JSON text sent as text/plain, as a form or with no type was decoded as JSON and
        the dealer created; it is refused, the problem naming the type the API takes."""
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            None,
            "application/json; charset=latin-1",
            "application/merge-patch+json",
        ):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await admin.post("/v1/dealers", content=DEALER, headers=headers)
            assert response.status_code == 415, (content_type, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            body = response.json()
            assert body["type"] == "urn:alarmrelay:problem:unsupported-media-type"
            assert problem_rules(body) == {("Content-Type", "media_type")}
            assert "application/json" in body["detail"]
        listed = await admin.get("/v1/dealers")
        assert listed.json()["items"] == []
        patched = await admin.patch(
            "/v1/dealers/1", content=DEALER, headers={"Content-Type": "text/plain"}
        )
        assert patched.status_code == 415, patched.text

    async def test_json_with_or_without_a_utf8_charset_is_taken(
        self, admin: httpx.AsyncClient
    ) -> None:
        for content_type in (
            "application/json",
            "application/json; charset=utf-8",
            'Application/JSON; Charset="UTF-8"',
        ):
            response = await admin.post(
                "/v1/dealers", content=DEALER, headers={"Content-Type": content_type}
            )
            assert response.status_code == 201, (content_type, response.text)

    async def test_requests_without_a_body_are_unaffected(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """No body: the handler's own answer whatever the type (a missing body is still the
        400 naming it, a DELETE is served)."""
        missing = await admin.post("/v1/dealers", headers={"Content-Type": "text/plain"})
        assert missing.status_code == 400, missing.text
        assert problem_rules(missing.json()) == {("body", "required")}
        dealer = await api.dealer("Acme")
        draft = await admin.post("/v1/drafts", json={"document": {"dealer": {"dealer_id": dealer}}})
        assert draft.status_code == 201, draft.text
        deleted = await admin.delete(f"/v1/drafts/{draft.json()['id']}")
        assert deleted.status_code == 204, deleted.text

    async def test_a_caller_without_a_valid_key_hears_401_first(self, api: Api) -> None:
        for client in (api.client(None), api.client("not-a-key")):
            response = await client.post(
                "/v1/dealers", content=DEALER, headers={"Content-Type": "text/plain"}
            )
            assert response.status_code == 401, response.text

    async def test_the_openapi_document_lists_the_415(self, admin: httpx.AsyncClient) -> None:
        document = (await admin.get("/schema/openapi.json")).json()
        assert "415" in document["paths"]["/v1/dealers"]["post"]["responses"]
        assert "415" not in document["paths"]["/v1/dealers"]["get"]["responses"]


def _rules(response: httpx.Response) -> list[tuple[str, str]]:
    return [(e["field"], e["rule"]) for e in response.json()["errors"]]


class TestStrictTypes:
    async def test_a_value_of_another_json_type_is_a_type_error(
        self, admin: httpx.AsyncClient
    ) -> None:
        """litestar's lax conversion took 1 and "true" for true, "2999" and 2999.0 for 2999:
        each is a 400 naming the field (rule type), as {"name": 5} is."""
        package = {"code": "p", "name": "P", "kind": "base", "account_types": ["automation"]}
        for field, value in (
            ("commercial", 1),
            ("commercial", "true"),
            ("active", 0),
            ("monthly_price_cents", "2999"),
            ("monthly_price_cents", 2999.0),
        ):
            response = await admin.post("/v1/packages", json={**package, field: value})
            assert response.status_code == 400, (field, value, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert _rules(response) == [(field, "type")], (field, value)
        station = {"name": "s", "receivers": [{"name": "r", "host": "127.0.0.1", "port": "9100"}]}
        response = await admin.post("/v1/stations", json=station)
        assert response.status_code == 400, response.text
        assert _rules(response) == [("receivers[0].port", "type")]
        response = await admin.put("/v1/stations/Central", json={"own": "false"})
        assert response.status_code == 400, response.text
        assert _rules(response) == [("own", "type")]
        listed = await admin.get("/v1/packages")
        assert listed.json()["items"] == []

    async def test_a_body_that_is_not_json_is_still_named_so(
        self, admin: httpx.AsyncClient
    ) -> None:
        """An array where an object belongs that is cut short: not JSON (rule json), not the
        type error its first character would give."""
        response = await admin.post(
            "/v1/dealers", content=b"[1, 2", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert _rules(response) == [("body", "json")]

    async def test_values_of_their_own_type_are_taken(self, admin: httpx.AsyncClient) -> None:
        package = {"code": "p", "name": "P", "kind": "base", "account_types": ["automation"]}
        created = await admin.post(
            "/v1/packages", json={**package, "commercial": True, "monthly_price_cents": 2999}
        )
        assert created.status_code == 201, created.text
        assert created.json()["commercial"] is True

    async def test_the_creation_steps_are_strict_too(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The creation routes decode each step on their own: a lax value there is listed with
        the other steps' errors."""
        dealer = await api.dealer("Acme")
        request = security_request(
            dealer,
            imei("49015420323751"),
            virtual=1,
            operations={"contract_length_months": "36"},
        )
        for path in ("/v1/customers/validate", "/v1/customers"):
            response = await admin.post(path, json=request)
            assert response.status_code == 400, (path, response.text)
            assert sorted(_rules(response)) == [
                ("operations.contract_length_months", "type"),
                ("virtual", "type"),
            ], path

    async def test_a_caller_without_a_valid_key_hears_401_first(self, api: Api) -> None:
        response = await api.client("not-a-key").post("/v1/dealers", json={"name": 5})
        assert response.status_code == 401, response.text


class TestDuplicateKeys:
    async def test_a_key_given_twice_is_a_400_naming_it(self, admin: httpx.AsyncClient) -> None:
        """{"name": "a", "name": "b"} created dealer "b" (the last one won, silently); a key
        given twice in one object is a 400 naming it by its path (rule duplicate)."""
        cases = [
            ("/v1/dealers", b'{"name": "Acme", "name": "Other"}', [("name", "duplicate")]),
            (
                "/v1/stations",
                b'{"name": "s", "receivers": [{"name": "r", "host": "127.0.0.1", "port": 9100,'
                b' "port": 9101, "name": "q"}]}',
                [("receivers[0].name", "duplicate"), ("receivers[0].port", "duplicate")],
            ),
            ("/v1/dealers", b'{"name": "Acme", "": 1, "": 2}', [("body", "duplicate")]),
        ]
        for path, body, expected in cases:
            response = await admin.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, body, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert _rules(response) == expected, body
        assert (await admin.get("/v1/dealers")).json()["items"] == []
        assert (await admin.get("/v1/stations")).json()["items"] == []

    async def test_a_forwarding_mode_given_twice_is_not_guessed(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The creation routes decode their steps themselves; a step's key given twice is
        refused there too, before any step is looked at."""
        dealer = await api.dealer("Acme")
        text = json.dumps(security_request(dealer, imei("49015420323751")))
        assert '"forwarding": {"mode": "never"}' in text
        body = text.replace(
            '"forwarding": {"mode": "never"}', '"forwarding": {"mode": "never", "mode": "always"}'
        )
        for path in ("/v1/customers/validate", "/v1/customers"):
            response = await admin.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, response.text)
            assert _rules(response) == [("forwarding.mode", "duplicate")], path

    async def test_the_same_key_in_two_objects_is_taken(self, admin: httpx.AsyncClient) -> None:
        body = (
            b'{"name": "s", "receivers": [{"name": "r1", "host": "127.0.0.1", "port": 9100},'
            b' {"name": "r2", "host": "127.0.0.1", "port": 9101}]}'
        )
        response = await admin.post(
            "/v1/stations", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 201, response.text
