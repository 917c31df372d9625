"""A request body is taken as the client meant it or refused: sent as JSON (415 otherwise), of
the types its fields declare (no 1 for true), each key once (real app on uvicorn, real
PostgreSQL)."""

from __future__ import annotations

import httpx

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
