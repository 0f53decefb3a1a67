"""Operating a fleet: watch it (`monitor`), measure it (`bench`), deploy it (`export`).

Everything here talks to running processes over HTTP (their /stats, /health and admin
API) and to the settings objects; it never imports the worker or the router internals.
"""
