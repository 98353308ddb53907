"""The two descriptions the code and its users share: plans.schema.json (the plan format, JSON Schema 2020-12)
and openapi.json (the HTTP API, OpenAPI 3.1). The folder is `schema/` in the repository and installs as
`plangate.schema`."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLANS = HERE / "plans.schema.json"
OPENAPI = HERE / "openapi.json"
