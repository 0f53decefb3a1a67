"""The fleet: finds the GPUs, starts one pinned worker per GPU and the router in front,
keeps them alive, and stops them cleanly.

``devices`` (inventory, pure), ``plan`` (what to start where), ``process`` (one local
child), ``launcher`` (the seam: local processes now, Ray later), ``supervisor`` (the loop),
``rundir`` (pid file and state for ``gpufleet status`` / ``down``).
"""
