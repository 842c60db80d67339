"""Status on the git results branch.

``document``: the status.json document and history lines; ``layout``: where files go on the
branch, what one production publishes there, STATUS.md; ``plots``: the pictures;
``branch``: the git plumbing that commits them without touching the work tree.

Import the submodule you need: this package imports nothing itself, so reading a file from
the branch (``branch``) loads neither pydantic nor matplotlib.
"""

DEFAULT_BRANCH = "reconciler/status"
"""The results branch every pass publishes to, unless told another (``--status-branch``)."""
