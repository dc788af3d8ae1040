"""History: attacks, mitigations, the audit log and attack packet samples.

* :mod:`~ddos_shield.store.schema` -- the versioned schema and its step-by-step migrations;
* :mod:`~ddos_shield.store.history` -- :class:`History`, the database (SQLite in WAL mode
  by default, PostgreSQL when configured): what is written and the read interface the
  API serves;
* :mod:`~ddos_shield.store.sql` -- the two engines behind one connection interface: every
  difference between their dialects is handled there;
* :mod:`~ddos_shield.store.writer` -- :class:`StoreWriter`, the event subscriber and its
  writer thread (the engine never waits on the disk), with periodic retention;
* :mod:`~ddos_shield.store.packets` -- :class:`PacketTap`, the bounded ring of recent
  sampled packets each attack's capture is taken from;
* :mod:`~ddos_shield.store.pcap` -- an attack's packets as a pcapng file.

::

    writer = open_store(config, tap)          # None when [store] enabled = false
    events.subscribe(writer)
    writer.history.attack(attack_id)          # the API reads through writer.history
    writer.history.pcap(attack_id)
"""

from __future__ import annotations

from pathlib import Path

from ddos_shield.config import Config
from ddos_shield.store.history import History, Packet, Retention
from ddos_shield.store.packets import PacketTap
from ddos_shield.store.schema import StoreError
from ddos_shield.store.writer import StoreWriter

__all__ = ["History", "Packet", "PacketTap", "Retention", "StoreError", "StoreWriter", "open_store", "store_path"]


def store_path(config: Config) -> Path:
    """The database file the configuration names (default: in ``shield.state_dir``)."""
    return Path(config.store.path) if config.store.path else Path(config.shield.state_dir) / "history.sqlite3"


def open_store(config: Config, tap: PacketTap | None = None) -> StoreWriter | None:
    """The history database and its writer thread as the configuration says, or
    None when the store is disabled.  Raises :class:`StoreError` naming the database
    (the file, or the PostgreSQL server without its password)."""
    s = config.store
    if not s.enabled:
        return None
    history = History(dsn=s.dsn) if s.backend == "postgresql" else History(store_path(config))
    return StoreWriter(
        history,
        Retention(days=s.retention_days, max_attacks=s.max_attacks, max_audit_rows=s.max_audit_rows),
        tap=tap,
        packets_per_attack=s.pcap_packets_per_attack,
        queue_size=s.queue_size,
        retention_interval=s.retention_interval_seconds,
    )
