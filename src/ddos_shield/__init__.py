"""DDoS Shield: an XDP data plane, a Python control plane, one record model.

Data flows one way: telemetry (``capture``, ``dataplane``) -> records (``records``)
-> detection (``detect``) -> decisions (``policy``) -> enforcement (``mitigate``),
all wired by the one orchestrator in ``engine``.
"""

__version__ = "0.1.0"
