"""The dashboard's HTTP surface without an API server: a store filled by hand, aiohttp's test client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from finetune_dashboard.kube import JobStore
from finetune_dashboard.main import parse_args
from finetune_dashboard.server import make_app


def ftj(name: str, step: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name, "resourceVersion": str(step)},
        "spec": {"task": {"type": "sequence-classification"}, "method": {"type": "lora"}},
        "status": {"phase": "Running", "progress": {"step": step}},
    }


async def _exercise() -> dict[str, Any]:
    store = JobStore(["team-a"])  # not started: filled by hand, as its watch would
    store.replace("team-a", [ftj("b", 3), ftj("a", 1)])
    async with TestClient(TestServer(make_app(store))) as client:
        listing = await client.get("/api/jobs")
        page = await client.get("/")
        missing = await client.get("/api/jobs/team-b/a")
        stream = await client.get("/api/stream")
        first = await stream.content.readuntil(b"\n\n")
        store.apply("MODIFIED", ftj("a", 2))
        second = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
        stream.close()
        return {
            "listing": await listing.json(),
            "csp": page.headers["Content-Security-Policy"],
            "missing": (missing.status, await missing.text()),
            "first": first.decode(),
            "second": second.decode(),
        }


def test_list_404_csp_and_the_live_stream() -> None:
    got = asyncio.run(_exercise())
    assert [(j["key"], j["step"]) for j in got["listing"]] == [("team-a/a", 1), ("team-a/b", 3)]
    assert "default-src 'self'" in got["csp"]
    assert got["missing"] == (404, "no FineTuneJob team-b/a in the namespaces this dashboard watches")
    assert got["first"].startswith("event: jobs\ndata: [") and '"step":1' in got["first"]
    assert '"key":"team-a/a"' in got["second"] and '"step":2' in got["second"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --all-namespaces or at least one --namespace"),
        (["--namespace", "Team_A"], "--namespace 'Team_A': not a namespace name"),
        (["--all-namespaces", "--port", "0"], "--port 0: give a port from 1 to 65535"),
    ],
)
def test_bad_flags_are_refused_by_name(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
