"""The admin token stays secret (issue 13): never in process arguments, never written
through a planted link, gone from disk when ``up`` ends."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import aiohttp

from gpufleet.fleet.up import ADMIN_TOKEN_DIR, ADMIN_TOKEN_FILE
from gpufleet.testing import run_router, run_server
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import TOKEN, wait_state


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def _admin_status(url: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url + "/admin/workers", headers=headers) as resp,
    ):
        return resp.status


async def test_the_router_reads_its_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with run_upstream() as upstream:
        with run_router([upstream.url], "--admin-token-file", str(token_file)) as router:
            assert await _admin_status(router.url, TOKEN) == 200
            assert await _admin_status(router.url, "wrong-token") == 401
            assert TOKEN not in _cmdline(router.pid)
            assert "visible to every local user" not in router.log()
        # On the command line it still works, with a warning that says where it shows.
        with run_router([upstream.url], "--admin-token", TOKEN) as router:
            await wait_state(router.url, upstream.url, "ready", within=10)
            assert await _admin_status(router.url, TOKEN) == 200
            assert "--admin-token on the command line is visible" in router.log()


async def test_up_keeps_the_token_private_and_removes_it_on_exit(tmp_path: Path) -> None:
    private = tmp_path / ".gpufleet" / ADMIN_TOKEN_DIR
    private.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    (tmp_path / ".gpufleet" / ADMIN_TOKEN_FILE).symlink_to(victim)
    token_path = tmp_path / ".gpufleet" / ADMIN_TOKEN_FILE
    args = ["up", "--model", "synthetic", "--cpu-workers", "1"]
    with run_server(args, cwd=tmp_path) as fleet:
        assert victim.read_text() == "keep\n"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o644
        assert not token_path.is_symlink()
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        token = token_path.read_text().strip()
        assert await _admin_status(fleet.url, token) == 200
        state = json.loads((tmp_path / ".gpufleet" / "state.json").read_text())
        for pid in (state["pid"], state["router"]["pid"], *(w["pid"] for w in state["workers"])):
            assert token not in _cmdline(pid), pid
        assert fleet.stop() == 0
    assert not token_path.is_symlink()
    assert not token_path.exists()
    assert victim.read_text() == "keep\n"
