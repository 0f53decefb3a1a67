"""The dashboard shows the batches a router runs, with their progress (headless Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

from gpufleet.testing import run_router, run_worker
from tests.integration.test_batches import _client, _jsonl, _wait
from tests.integration.test_dashboard import Browser, cells, needs_chromium


@needs_chromium
async def test_dashboard_shows_a_running_batch(tmp_path: Path) -> None:
    slow = ("--model-arg", "base_ms=100", "--model-arg", "per_item_ms=0")
    with (
        run_worker("synthetic", *slow, "--max-batch-size", "2") as worker,
        run_router([worker.url], "--batch-store", str(tmp_path / "store")) as router,
    ):
        client = _client(router)
        uploaded = client.files.create(file=("in.jsonl", _jsonl(400)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/predict",  # type: ignore[arg-type]
            completion_window="24h",
        )
        _wait(client, batch.id, lambda b: b.request_counts.completed >= 4, within=30, what="4")
        async with Browser(tmp_path / "profile") as browser:
            html = await browser.open(router.url + "/dashboard", polls=3)
            errors = browser.errors
        client.batches.cancel(batch.id)
    assert errors == []
    assert re.search(r'<div class="chart errors-box" id="batches-box">', html)  # not hidden
    found = re.search(rf'<tr class="batch" data-batch-id="{batch.id}">(.*?)</tr>', html)
    assert found is not None, html
    row = cells(found.group(1))
    assert row["status"] == "in_progress"
    assert row["endpoint"] == "/predict"
    assert row["total"] == "400"
    assert 4 <= int(row["done"]) < 400
    assert row["failed"] == "0"
