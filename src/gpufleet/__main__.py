"""``python -m gpufleet`` is the ``gpufleet`` command."""

from gpufleet.cli.main import main

if __name__ == "__main__":
    main()
