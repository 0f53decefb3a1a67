"""`gpufleet export nginx`: the blocks' content (nginx itself checks them in integration)."""

from __future__ import annotations

import re
from pathlib import Path

from gpufleet.operate.export import ExportOptions, render
from tests.unit._export import POOLS_YAML, layout_of, write_config


def _block(text: str, head: str) -> str:
    """The body of the block that starts with ``head {`` (no nested blocks inside)."""
    match = re.search(re.escape(head) + r" \{\n(.*?)\n *\}", text, re.S)
    assert match, f"no block {head!r} in:\n{text}"
    return match.group(1)


def test_one_pool_upstream_and_sse_safe_server() -> None:
    layout = layout_of({"gpus": "2", "model": "synthetic", "host": "0.0.0.0", "port": 9000})
    text = render("nginx", layout, ExportOptions())
    upstream = _block(text, "upstream gpufleet_default")
    assert "least_conn;" in upstream
    servers = re.findall(r"server (\S+) max_fails=(\d+) fail_timeout=(\S+);", upstream)
    assert servers == [("127.0.0.1:9001", "3", "10s"), ("127.0.0.1:9002", "3", "10s")]
    assert re.search(r"keepalive \d+;", upstream)
    server = text[text.index("server {") :]
    for line in (
        "listen 0.0.0.0:9000;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_read_timeout 300s;",
        "proxy_next_upstream error timeout;",
        "location / {",
        "proxy_pass http://gpufleet_default;",
    ):
        assert line in server, line
    # nginx never passes on a POST it began to send (no non_idempotent, and the body is not
    # buffered), so an http_503 condition would be dead config: none, and the comment says so.
    assert re.findall(r"^\s*proxy_next_upstream\s.*$", text, re.M) == [
        "    proxy_next_upstream error timeout;"
    ]
    assert "full queue is not reproduced" in server
    # How to start the workers it points at, pinned like `up` pins them.
    assert "#   CUDA_VISIBLE_DEVICES=1 gpufleet worker --model synthetic" in text


def test_pools_become_locations_with_router_settings(tmp_path: Path) -> None:
    layout = layout_of(config=write_config(tmp_path, POOLS_YAML))
    text = render("nginx", layout, ExportOptions())
    fast = _block(text, "upstream gpufleet_fast")
    assert re.findall(r"server (\S+) max_fails=5 fail_timeout=7s;", fast) == [
        "127.0.0.1:8001",
        "127.0.0.1:8002",
    ]
    default = _block(text, "upstream gpufleet_default")
    assert re.findall(r"server (\S+) max", default) == ["127.0.0.1:8003", "127.0.0.1:8004"]
    # The prefix is stripped, as the router strips it: /fast/x reaches a worker as /x.
    assert _block(text, "    location /fast/").strip() == "proxy_pass http://gpufleet_fast/;"
    assert _block(text, "    location = /fast").strip() == "proxy_pass http://gpufleet_fast/;"
    assert "proxy_read_timeout 120s;" in text
    assert text.index("location /fast/") < text.index("location / {")


def test_no_default_pool_answers_404(tmp_path: Path) -> None:
    yaml_text = (
        "fleet:\n  pools:\n    a: {gpus: '0,', prefix: /a}\n    b: {gpus: '1,', prefix: /b}\n"
    )
    text = render("nginx", layout_of(config=write_config(tmp_path, yaml_text)), ExportOptions())
    assert "upstream gpufleet_default" not in text
    assert _block(text, "    location /").strip() == "return 404;"
