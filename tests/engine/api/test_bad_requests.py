"""Requests the API cannot serve get a problem document that says why, never a bare 500 or the
database's own words (real app on uvicorn, real PostgreSQL; a second pool through a proxy the
test cuts for the outage)."""

from __future__ import annotations

import asyncpg
import httpx

from engine.api.app import ApiSettings, create_app
from engine.api.auth import create_key
from engine.http_server import HttpServer
from tests.engine.api.conftest import Api
from tests.support.tcp_proxy import proxied_database

PROBLEM = "application/problem+json"


class TestUndecodableBodies:
    async def test_truncated_json_names_the_body(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post(
            "/v1/dealers", content=b'{"name": ', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.headers["content-type"].startswith(PROBLEM)
        body = response.json()
        assert body["type"] == "urn:alarmrelay:problem:bad-request"
        assert [(e["field"], e["rule"]) for e in body["errors"]] == [("body", "json")]

    async def test_deeply_nested_body_is_a_400(self, admin: httpx.AsyncClient) -> None:
        """100,000 opening brackets: 400 'nested too deeply', not a 500 (RecursionError)."""
        response = await admin.post(
            "/v1/dealers", content=b"[" * 100_000, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [("body", "depth")]

    async def test_field_paths_are_the_bodys_own(self, admin: httpx.AsyncClient) -> None:
        """Unknown, missing and mistyped fields are all named as in the body (litestar says
        "data.nmae" for the first two, after its handler parameter)."""
        cases = [
            ("/v1/dealers", {"name": "x", "nmae": "y"}, [("nmae", "unknown")]),
            ("/v1/dealers", {}, [("name", "required")]),
            ("/v1/dealers", {"name": 5}, [("name", "type")]),
            ("/v1/stations", {"name": "s", "colour": "red"}, [("colour", "unknown")]),
        ]
        for path, body, expected in cases:
            response = await admin.post(path, json=body)
            assert response.status_code == 400, (path, body, response.text)
            assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == expected

    async def test_a_field_with_an_empty_name_is_unknown_not_a_type_error(
        self, admin: httpx.AsyncClient
    ) -> None:
        """{"": …} is a field the body does not take: rule unknown like any other (it was rule
        type, and on the body itself, since the name between the backticks was empty)."""
        cases = [
            ("/v1/dealers", {"": None, "name": "x"}, [("body", "unknown")]),
            (
                "/v1/stations",
                {"name": "s", "receivers": [{"name": "r", "": 1}]},
                [("receivers[0]", "unknown")],
            ),
        ]
        for path, body, expected in cases:
            response = await admin.post(path, json=body)
            assert response.status_code == 400, (path, body, response.text)
            assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == expected
        body = {"account_type": "video_access", "customer": {"": 1}}  # a creation step
        response = await admin.post("/v1/customers/validate", json=body)
        assert response.status_code == 400, response.text
        assert ("customer", "unknown") in {
            (e["field"], e["rule"]) for e in response.json()["errors"]
        }

    async def test_a_missing_body_or_query_parameter_is_named_required(
        self, admin: httpx.AsyncClient
    ) -> None:
        """No body at all (curl without -d) is rule required on the body with a sentence (the
        error said only "'data'"); a missing query parameter is named too (no errors listed)."""
        for path in ("/v1/dealers", "/v1/api-keys", "/v1/customers", "/v1/customers/validate"):
            response = await admin.post(path, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            errors = response.json()["errors"]
            assert [(e["field"], e["rule"]) for e in errors] == [("body", "required")], path
            assert errors[0]["message"] == "the request needs a JSON body", path
        response = await admin.get("/v1/time-zone")
        assert response.status_code == 400
        assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [("zip", "required")]


class TestWrongMethod:
    async def test_a_405_names_the_methods_the_resource_takes(
        self, admin: httpx.AsyncClient
    ) -> None:
        """RFC 9110 §15.5.6: a 405 carries Allow; the problem document kept litestar's status and
        dropped its header, so a client could not learn which methods to use."""
        response = await admin.put("/v1/audit")
        assert response.status_code == 405
        assert response.headers["content-type"].startswith(PROBLEM)
        assert "GET" in {m.strip() for m in response.headers["allow"].split(",")}
        response = await admin.delete("/v1/stations")
        assert response.status_code == 405
        assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}

    async def test_options_lists_every_method_as_the_405_does(self, api: Api) -> None:
        """OPTIONS /v1/stations answered Allow: OPTIONS, POST (litestar's answer kept the first
        group of handlers of a path, GET came from another); it lists what the 405 lists, with
        or without a key."""
        expected = {
            "/v1/stations": {"GET", "POST", "OPTIONS"},
            "/v1/drafts/1": {"GET", "PATCH", "DELETE", "OPTIONS"},
            "/v1/dealers/1": {"GET", "PATCH", "OPTIONS"},
            "/v1/customers/1": {"GET", "PATCH", "OPTIONS"},
            "/v1/me": {"GET", "OPTIONS"},
        }
        for client in (api.client(api.admin_key), api.client(None)):
            for path, methods in expected.items():
                options = await client.options(path)
                assert options.status_code == 204, (path, options.text)
                wrong = await client.request("PROPFIND", path)
                assert wrong.status_code == 405, (path, wrong.text)
                allowed = {m.strip() for m in options.headers["allow"].split(",")}
                assert allowed == {m.strip() for m in wrong.headers["allow"].split(",")}, path
                assert allowed == methods, path


class TestUnknownQueryParameters:
    async def test_a_mistyped_filter_is_a_400_not_an_unfiltered_answer(
        self, admin: httpx.AsyncClient
    ) -> None:
        """?categroy=alarms on the history was ignored and answered every signal, which reads
        as the filtered list; an unknown query parameter is now named (rule unknown) with the
        ones the endpoint takes."""
        response = await admin.get("/v1/customers/1/signals", params={"categroy": "alarms"})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        [error] = response.json()["errors"]
        assert (error["field"], error["rule"]) == ("categroy", "unknown")
        assert "category" in error["message"] and "cursor" in error["message"]
        assert "customer_id" not in error["message"] and "caller" not in error["message"]
        listed = await admin.get("/v1/customers", params={"dealer": "5", "limit": "2"})
        assert listed.status_code == 400
        assert [e["field"] for e in listed.json()["errors"]] == ["dealer"]

    async def test_a_filter_given_twice_is_a_400_not_one_of_them(
        self, admin: httpx.AsyncClient
    ) -> None:
        """?category=alarms&category=panics answered the alarms only, which reads as both; a
        parameter that takes one value and is given more than once is a 400 (rule repeated)."""
        response = await admin.get(
            "/v1/customers/1/signals", params=[("category", "alarms"), ("category", "panics")]
        )
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [
            ("category", "repeated")
        ]
        listed = await admin.get("/v1/dealers", params=[("limit", "1"), ("limit", "2")])
        assert listed.status_code == 400
        assert [(e["field"], e["rule"]) for e in listed.json()["errors"]] == [("limit", "repeated")]
        assert (await admin.get("/v1/dealers", params={"limit": "1"})).status_code == 200

    async def test_the_creation_routes_refuse_unknown_parameters_too(
        self, admin: httpx.AsyncClient
    ) -> None:
        """The creation routes have a before_request hook of their own, which litestar runs
        instead of the router's: ?dry_run=1 on POST /v1/customers was ignored, so a valid body
        created the customer the client meant to try; every /v1 route refuses such a parameter."""
        for path in ("/v1/customers", "/v1/customers/validate", "/v1/commitments"):
            response = await admin.post(path, params={"dry_run": "1"}, json={})
            assert response.status_code == 400, (path, response.text)
            assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [
                ("dry_run", "unknown")
            ], path

    async def test_a_request_without_a_key_is_a_401_first(self, api: Api) -> None:
        """No key and a mistyped parameter: the missing key is what the caller must hear."""
        response = await api.client(None).get("/v1/customers", params={"dealer": "5"})
        assert response.status_code == 401

    async def test_the_parameters_an_endpoint_takes_still_work(
        self, admin: httpx.AsyncClient
    ) -> None:
        """Aliased (zip), paginated and plain parameters are taken as before."""
        assert (await admin.get("/v1/customers", params={"limit": "2"})).status_code == 200
        zone = await admin.get("/v1/time-zone", params={"zip": "60601"})
        assert zone.status_code == 200, zone.text


class TestValuesTheDatabaseCannotHold:
    async def test_an_id_beyond_64_bits_is_not_found(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/dealers/99999999999999999999")
        assert response.status_code == 404
        assert "query argument" not in response.text

    async def test_a_cursor_beyond_64_bits_names_the_parameter(
        self, admin: httpx.AsyncClient
    ) -> None:
        response = await admin.get("/v1/dealers?cursor=99999999999999999999999")
        assert response.status_code == 400
        assert response.json()["detail"] == "query parameter cursor is out of range"

    async def test_other_digits_beside_a_cursor_out_of_range_do_not_break_the_answer(
        self, admin: httpx.AsyncClient
    ) -> None:
        """A cursor beyond 64 bits next to a parameter of superscript digits or of 4,400
        digits (more than int() reads): still the 400 naming the cursor, not a crash of the
        error handler itself."""
        for other in ("%C2%B2%C2%B2", "1" * 4400):
            response = await admin.get(f"/v1/audit?cursor=9223372036854775808&resource_id={other}")
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")

    async def test_a_nul_character_is_named(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/dealers", json={"name": "a\u0000b"})
        assert response.status_code == 400
        assert "NUL character" in response.json()["detail"]
        assert "UTF8" not in response.text


class TestDatabaseUnavailable:
    async def test_503_with_retry_after_while_the_database_is_cut_off(
        self, api: Api, database_url: str
    ) -> None:
        """With its database cut off the API answers 503 (retry later), then serves again."""
        async with proxied_database(database_url) as (proxy, url):
            pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
            assert pool is not None
            _, key = await create_key(pool, role="admin", dealer_id=None)
            app = create_app(pool=pool, settings=ApiSettings())
            server = HttpServer(app, host="127.0.0.1", port=0)
            await server.start()
            headers = {"Authorization": f"Bearer {key}"}
            try:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=30
                ) as client:
                    assert (await client.get("/v1/dealers")).status_code == 200
                    proxy.cut()
                    down = await client.get("/v1/dealers")
                    assert down.status_code == 503, down.text
                    assert down.headers["retry-after"] == "5"
                    assert down.json()["type"] == "urn:alarmrelay:problem:unavailable"
                    proxy.restore()
                    statuses = [(await client.get("/v1/dealers")).status_code for _ in range(3)]
                    assert statuses[-1] == 200
            finally:
                await server.stop()
                await pool.close()
