"""ragtune's flows. Importing the package applies the process defaults (telemetry off unless the user says
otherwise) before any flow module imports Prefect: ``python -m flows.X`` starts here."""

import tasks.runtime.process  # noqa: F401  - sets the defaults on import
