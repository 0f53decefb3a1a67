"""One process per device: HTTP API, bounded queue, dynamic batcher, OOM back-off, stats.

``gpufleet worker`` runs ``gpufleet.worker.main.serve``; the pieces are ``batcher``
(when a batch leaves), ``runner`` (the device thread), ``service`` (state and counters),
``app``/``predict``/``openai_routes`` (HTTP) and ``metrics`` (Prometheus).
"""
