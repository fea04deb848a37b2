"""An OpenAI-compatible server with per-request steering and per-token persona readings.

``personavec serve`` (see ``docs/serving.md``): :mod:`.config` (limits), :mod:`.schemas` (request
bodies and the OpenAI error shape), :mod:`.vectors` (the loaded vectors and how a request's
``steering`` / ``monitor`` / ``guard`` become interventions), :mod:`.rows` (one batch row's
decoding state), :mod:`.scheduler` (dynamic batching on the HF engine), :mod:`.responses` (OpenAI
response and chunk bodies), :mod:`.app` (the FastAPI routes) and :mod:`.server` (uvicorn).
"""
