"""plangate: a subscription gate driven by plans.yaml.

One import name, four parts (each a folder of the repository, mapped by pyproject.toml's package-dir):
`plangate.policy` (the plan language), `plangate.engine` (what a plan means), `plangate.server` (the gate:
HTTP, Stripe, store, jobs; the `server` extra) and `plangate.schema` (the plan schema and the OpenAPI file).
`plangate.client` talks to a running gate (the `client` extra); `plangate.cli` is the `plangate` command.
"""

__version__ = "0.2.0"
