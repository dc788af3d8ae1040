"""The shield's few exceptions, raised at boundaries with the offending value named.

::

    ShieldError
     ├── ConfigError      a configuration file or value is invalid (line and field named)
     ├── DataPlaneError   the kernel refused something (load, attach, map update)
     ├── MitigationError  a backend outside the kernel refused a rule or lost its enforcement point
     └── LabError         the lab network could not be built or used

Pure code raises built-in errors (``ValueError``...); the boundary wraps them.
"""


class ShieldError(Exception):
    """Base of the shield's errors."""


class ConfigError(ShieldError):
    """A configuration is invalid; the message names file, line and field."""


class DataPlaneError(ShieldError):
    """The kernel data plane could not be loaded, attached or updated."""


class MitigationError(ShieldError):
    """A backend outside the kernel (BGP, notify) refused a rule or cannot reach what enforces it."""


class LabError(ShieldError):
    """The lab network could not be built, or a lab request was unsafe."""
