"""The one way through the code: load desired state at a ref, open a production, run a pass.

Every verb of the command line goes through here, so a pass means the same thing whoever
asks for it: the desired state read from git (never from the working tree, unless
``allow_dirty``; at the production's last good revision when the ref's does not load), the
production's lease, its ledger (rebuilt from logs/ if lost), its scheduler, the engine's
observe -> plan -> apply, and publishing status to the results branch as the last step,
once, whether the pass succeeded or not.

Imports run one way: cli -> session -> engine -> core; the adapters (git, ledger, lease,
scheduler, results branch) are opened here and handed to the engine.

- ``desired``: Options, load_desired, the last good revision, production_names, fetch_desired
- ``production``: open_production (lease, tag, directory tree, ledger, scheduler)
- ``passes``: run_pass, read_plan, read_status
- ``site``: adopt, load_report_inputs, lease_of, doctor
- ``legacy``: import_legacy (the old production manager's database)
"""

from reconciler.session.desired import (
    DesiredState,
    Options,
    Warn,
    fetch_desired,
    load_desired,
    production_names,
    warn,
)
from reconciler.session.legacy import ImportReport, import_legacy
from reconciler.session.passes import PassReport, read_plan, read_status, run_pass
from reconciler.session.production import Production, open_production
from reconciler.session.site import adopt, doctor, lease_of, load_report_inputs

__all__ = [
    "DesiredState", "ImportReport", "Options", "PassReport", "Production", "Warn", "adopt", "doctor", "fetch_desired", "import_legacy", "lease_of",
    "load_desired", "load_report_inputs", "open_production", "production_names", "read_plan", "read_status", "run_pass", "warn",
]
