"""The HTTP side of the gate: the aiohttp app, the /v1/ API, the probes and the Stripe webhook endpoint."""
