"""The ``gpufleet`` command: thin commands over the parts, no logic of their own."""
