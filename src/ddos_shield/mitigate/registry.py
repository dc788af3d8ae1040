"""The one list of enforcement backends the configuration can name.

The data plane's own backend (XDP, or nftables where XDP cannot attach) is always
there; ``mitigation.backends`` adds others by kind.  Each kind is one module of this
package with an ``open_backend(config) -> Backend`` function, imported only when a
configuration names it, so a shield without BGP never loads a BGP speaker's code.

Kinds and what the engine does with them:

* ``bgp``    -- takes the upstream ladder steps (Flowspec, remote-triggered blackhole);
* ``notify`` -- enforces nothing: told of every action on every other backend, so that
  systems the shield does not drive itself hear of them.

>>> KINDS["bgp"]
'ddos_shield.mitigate.bgp'
"""

from __future__ import annotations

import importlib

from ddos_shield.config import Config
from ddos_shield.errors import ConfigError
from ddos_shield.mitigate.base import Backend

#: kind -> module providing ``open_backend(config)``
KINDS: dict[str, str] = {
    "bgp": "ddos_shield.mitigate.bgp",
    "notify": "ddos_shield.mitigate.notify",
}
#: kinds that enforce nothing and hear of every action instead
NOTIFIERS = ("notify",)


def open_backends(config: Config) -> list[Backend]:
    """The further backends ``mitigation.backends`` names, opened; ConfigError naming
    the kind when one is unknown or not part of this installation."""
    return [
        open_backend(kind, config, f"mitigation.backends[{i}]") for i, kind in enumerate(config.mitigation.backends)
    ]


def open_backend(kind: str, config: Config, where: str = "mitigation.backends") -> Backend:
    """One backend of ``kind`` for ``config`` (at start, or when a reload changes its
    settings); ConfigError naming ``where`` when it cannot be opened."""
    module_name = KINDS.get(kind)
    if module_name is None:
        raise ConfigError(f"{where}: unknown backend {kind!r} (known: {', '.join(KINDS)})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{where}: backend {kind!r} is not part of this installation ({e})") from None
    backend: Backend = module.open_backend(config)
    if backend.name != kind:
        raise ConfigError(f"{where}: module {module_name} opened a backend named {backend.name!r}")
    return backend
