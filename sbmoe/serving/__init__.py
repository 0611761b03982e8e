"""``sbmoe serve``: index folders behind an HTTP API (Anserini's REST shape plus batched search) and an MCP
server, with dynamic batching, reload without downtime, and a bearer token off loopback.

Modules, one job each: ``config`` (limits and defaults, defined once), ``auth`` (token, bind check),
``errors`` (statuses and one-line messages), ``metrics`` (Prometheus text), ``batcher`` (the encoder's queue
and worker), ``controller`` (what REST and MCP share), ``middleware`` (the front door), ``routes`` and
``app`` (FastAPI), ``mcp_server`` (MCP tools), ``server`` (start, drain, stop). Nothing heavy is imported
here; ``sbmoe.serving.config`` is torch-free.
"""
