"""docs/api.md's examples work: its package, station and customer requests, sent as written (the
dealer id aside), create what the text says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.engine.api.catalog_setup import PACKAGES
from tests.engine.api.conftest import Api

DOC = Path(__file__).parents[3] / "docs" / "api.md"
# A curl line (continued with a backslash or not) and its -d '…' body.
_CURL = re.compile(
    r"curl -s (?:-X (\w+) )?\"?\$API/([^\s\"]+)\"?(?:[^\n]|\\\n)*?-d '(\{.*?\})'", re.DOTALL
)


def _examples() -> list[tuple[str, str, Any]]:
    """(method, path, body) of every curl example with a JSON body that parses."""
    found = []
    for method, path, body in _CURL.findall(DOC.read_text()):
        try:
            found.append((method or "POST", path, json.loads(body)))
        except json.JSONDecodeError:
            continue  # an abbreviated body ({…})
    return found


def _example(method: str, path: str) -> Any:
    [body] = [b for m, p, b in _examples() if (m, p) == (method, path)]
    return body


class TestDocsExamples:
    async def test_package_station_and_customer_examples(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The documented package, station and one-request customer creation succeed in order."""
        documented = [b for m, p, b in _examples() if (m, p) == ("POST", "packages")]
        # The add-ons the customer example uses are among the documented packages.
        assert {"res-voice", "sup6", "enterprise"} <= {p["code"] for p in documented}
        for package in documented:
            created = await admin.post("/v1/packages", json=package)
            assert created.status_code == 201, created.text
        for other in PACKAGES:
            if other["code"] not in {p["code"] for p in documented}:
                assert (await admin.post("/v1/packages", json=other)).status_code == 201
        dealer = await api.dealer("Acme")
        client = api.client(await api.key("dealer", dealer))
        [station] = [b for m, p, b in _examples() if (m, p) == ("POST", "stations")]
        assert (await client.post("/v1/stations", json=station)).status_code == 201
        customer = _example("POST", "customers")
        customer["dealer"]["dealer_id"] = dealer
        created = await client.post("/v1/customers", json=customer)
        assert created.status_code == 201, created.text
        summary = created.json()["summary"]
        assert summary["two_way_voice"] is True and summary["supervision_interval_s"] == 6 * 3600
        customer_id = created.json()["customer"]["id"]
        patch = _example("PATCH", "customers/12")
        changed = await client.patch(f"/v1/customers/{customer_id}", json=patch)
        assert changed.status_code == 200, changed.text
        forwarding = _example("PUT", "customers/12/forwarding")
        assert (
            await client.put(f"/v1/customers/{customer_id}/forwarding", json=forwarding)
        ).status_code == 200
        swap = _example("POST", "customers/12/module-swap")
        swapped = await client.post(f"/v1/customers/{customer_id}/module-swap", json=swap)
        assert swapped.status_code == 200, swapped.text
