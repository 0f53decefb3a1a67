"""Output names cannot escape their folder, stay unique and stable; writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufleet.client.outputs import (
    MAX_STEM,
    ResultRecord,
    ResultsLog,
    encode_output,
    extension_for,
    inside,
    remove_stale_temporaries,
    safe_stem,
    unique_stems,
    write_atomic,
)
from gpufleet.errors import ClientError


@pytest.mark.parametrize(
    ("item_id", "expected"),
    [
        ("image_001", "image_001"),
        ("../../x", "x"),
        ("/abs", "abs"),
        ("a/b\\c", "a_b_c"),
        ("..", "item"),
        ("", "item"),
        (".hidden", "hidden"),
        ("a..b", "a.b"),
        ("con", "_con"),
        ("NUL.txt", "_NUL.txt"),
        ("caf\u00e9 prompt", "caf_prompt"),
    ],
)
def test_safe_stem(item_id: str, expected: str) -> None:
    assert safe_stem(item_id) == expected


def test_long_ids_are_capped_and_stay_distinct() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    sa, sb = safe_stem(a), safe_stem(b)
    assert len(sa) <= MAX_STEM
    assert len(sb) <= MAX_STEM
    assert sa != sb


def test_unique_stems_are_stable_and_case_insensitive() -> None:
    ids = ["a", "a", "A", "a/b", "a_b", "summary", "a"]
    stems = unique_stems(ids)
    assert stems == ["a", "a-2", "A-3", "a_b", "a_b-2", "summary-2", "a-4"]
    assert unique_stems(ids) == stems
    assert len({s.lower() for s in stems}) == len(stems)


@given(st.lists(st.text(max_size=400), max_size=30))
def test_any_ids_map_to_unique_names_inside_the_folder(ids: list[str]) -> None:
    root = Path("/tmp/gpufleet-names-root")
    stems = unique_stems(ids)
    assert len({s.lower() for s in stems}) == len(ids)
    for stem in stems:
        assert 0 < len(stem) <= MAX_STEM + 8
        assert "/" not in stem
        assert "\\" not in stem
        assert not stem.startswith(".")
        assert inside(root, stem + ".json").parent == root.resolve()


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../b", "sub/file"):
        with pytest.raises(ClientError):
            inside(tmp_path, bad)


def test_write_atomic_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_atomic(tmp_path, "a.png", b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"
    write_atomic(tmp_path, "a.png", b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".a.png.123.gpufleet-tmp").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_results_log_done_needs_record_and_file(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path)
    assert log.done() == {}
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "c.json").write_text("{}")
    log.append(ResultRecord("a", "a", "a.json", "ok"))
    log.append(ResultRecord("b", "b", "b.json", "ok"))  # file lost
    log.append(ResultRecord("c", "c", None, "failed"))
    log.append(ResultRecord("x", "x", "../escape.json", "ok"))
    with log.path.open("a") as fh:
        fh.write('{"id": "d", "key": "d", "fi')  # a line cut short by SIGKILL
    assert log.done() == {"a": "a.json"}


def test_encode_output() -> None:
    assert encode_output(b"\x89PNG", "image/png") == (b"\x89PNG", ".png")
    data, ext = encode_output({"echo": "hi"}, "application/json")
    assert ext == ".json"
    assert json.loads(data) == {"echo": "hi"}
    assert extension_for("image/jpeg; q=1") == ".jpg"
    assert extension_for("application/x-unknown") == ".bin"


def test_a_link_at_an_output_name_is_replaced_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").symlink_to(outside)
    (out / f".a.json.{os.getpid()}.gpufleet-tmp").symlink_to(outside)  # a planted temporary
    write_atomic(out, "a.json", b"new")
    assert not (out / "a.json").is_symlink()
    assert (out / "a.json").read_bytes() == b"new"
    assert outside.read_text() == "keep"


def test_a_linked_results_log_is_neither_read_nor_appended_to(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"key": "a", "file": "a.json", "status": "ok"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("{}")
    (out / "results.jsonl").symlink_to(outside)
    log = ResultsLog(out)
    assert log.done() == {}
    log.open()
    (out / "results.jsonl").unlink()  # a link planted after the open is not followed either
    (out / "results.jsonl").symlink_to(outside)
    log.append(ResultRecord("b", "b", "b.json", "ok"))
    log.close()
    assert outside.read_text().count("\n") == 1
