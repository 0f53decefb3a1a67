"""The router: one endpoint in front of many upstreams (pools, policies, health, retries).

``gpufleet router`` runs it (``gpufleet.router.main.serve``); ``create_app`` builds the
aiohttp application for embedding or for the fleet.
"""
