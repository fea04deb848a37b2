"""An OpenAI-compatible server with per-request steering and per-token persona readings.

``personavec serve`` (see ``docs/serving.md``): :mod:`.config` (limits), :mod:`.schemas` (request
bodies and the OpenAI error shape), :mod:`.vectors` (the loaded vectors and how a request's
``steering`` / ``monitor`` / ``guard`` become interventions), :mod:`.jobs` (a request's choice and
its events), :mod:`.rows` (one row's decoding state), :mod:`.decoder` (the running batch and its
KV cache), :mod:`.scheduler` (continuous batching: the worker thread and queue),
:mod:`.responses` (OpenAI response and chunk bodies), :mod:`.app` (the FastAPI routes, auth and
limits) and :mod:`.server` (uvicorn). The dashboard's files are in ``static/``.
"""
