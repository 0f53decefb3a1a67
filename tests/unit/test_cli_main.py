"""The ``gpufleet`` entry point's argument forms."""

from __future__ import annotations

from gpufleet.cli.main import _ray_address_form


def test_ray_followed_by_an_address_names_it() -> None:
    got = _ray_address_form(["up", "--ray", "10.0.0.1:6379", "--model", "synthetic"])
    assert got == ["up", "--ray", "--ray-address", "10.0.0.1:6379", "--model", "synthetic"]
    assert _ray_address_form(["up", "--ray=ray://h:10001"]) == [
        "up",
        "--ray",
        "--ray-address",
        "ray://h:10001",
    ]


def test_ray_alone_or_before_an_option_stays_a_flag() -> None:
    assert _ray_address_form(["up", "--ray"]) == ["up", "--ray"]
    assert _ray_address_form(["up", "--ray", "--workers", "2"]) == ["up", "--ray", "--workers", "2"]


def test_other_commands_are_left_alone() -> None:
    argv = ["generate", "-f", "up", "--ray", "x"]
    assert _ray_address_form(argv) == argv
