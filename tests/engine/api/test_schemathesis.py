"""schemathesis against our OpenAPI document: no server errors and no schema violations."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from tests.engine.api.catalog_setup import create_packages, create_station, imei, security_request
from tests.engine.api.conftest import Api

ST = Path(sys.executable).with_name("st")


@pytest.mark.slow
class TestSchemathesis:
    async def test_no_server_errors_no_schema_violations(
        self, api: Api, admin: httpx.AsyncClient, tmp_path: Path
    ) -> None:
        """Generated requests to every operation get no 5xx and answers that match the document."""
        if not ST.exists() and shutil.which("st") is None:
            pytest.skip("schemathesis is not installed (pip install schemathesis)")
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        await create_station(api.pool, dealer)
        created = await admin.post(
            "/v1/customers", json=security_request(dealer, imei("49015420323751"))
        )
        assert created.status_code == 201
        process = await asyncio.create_subprocess_exec(
            str(ST) if ST.exists() else "st",
            "run",
            f"{api.base_url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {api.admin_key}",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            "15",
            "--generation-deterministic",
            "--phases",
            "examples,fuzzing",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # schemathesis keeps a request cache in the working directory
        )
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        assert process.returncode == 0, text[-6000:]
