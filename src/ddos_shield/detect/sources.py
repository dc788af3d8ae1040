"""The sources of each open attack, in bounded memory.

For every open attack a :class:`~ddos_shield.detect.sketch.SourceSketch` takes the
attack's samples as they arrive (its categories at its target), so that the attack
can say, at any moment and whatever the number of distinct sources, how many there
were, what share of its packets came from sources seen once (spoofed-looking) and
which sources were heaviest.  A sketch is seeded from the sample window when the
attack is first seen, then fed only new samples; it is dropped when the attack ends.
A carpet bomb's sketch leaves out the samples of the host attacks inside its prefix.
At most ``max_attacks`` attacks are followed (the oldest first), so the memory is
bounded by ``max_attacks`` x the size of one sketch (about 40 KiB).  No I/O, no clock.

>>> from ddos_shield.records import Attack, AttackType, Category, as_network, empty_traffic
>>> a = Attack(1, as_network("203.0.113.10/32"), "default", (AttackType.UDP_FLOOD,), (Category.UDP,),
...            0.0, 1.0, 1.0, 1.0, 1.0, 0.0)
>>> s = AttackSources(); s.update([a], empty_traffic(), empty_traffic())
>>> s.summary(1).records
0
"""

from __future__ import annotations

import numpy as np

from ddos_shield.detect.carpet import inner_mask
from ddos_shield.detect.sketch import SourceSketch, SourceSummary
from ddos_shield.records import Attack, TrafficBatch, addresses_in, take_rows

#: attacks whose sources are followed at once (each about 40 KiB)
MAX_ATTACKS = 1024


class AttackSources:
    """See the module docstring."""

    def __init__(self, max_attacks: int = MAX_ATTACKS, lead: float = 0.2) -> None:
        self._max = max_attacks
        self._lead = lead
        self._sketches: dict[int, SourceSketch] = {}

    def __len__(self) -> int:
        return len(self._sketches)

    @property
    def nbytes(self) -> int:
        """Memory the sketches hold."""
        return sum(s.nbytes for s in self._sketches.values())

    @property
    def held_keys(self) -> int:
        """Source addresses held over all sketches (bounded)."""
        return sum(s.held_keys for s in self._sketches.values())

    def update(self, active: list[Attack], new: TrafficBatch, window: TrafficBatch) -> None:
        """Feed ``new`` samples to the open attacks' sketches; a newly seen attack is
        seeded from ``window`` (which holds ``new`` too) from a little before its start."""
        ids = {a.attack_id for a in active}
        for aid in [k for k in self._sketches if k not in ids]:
            del self._sketches[aid]
        for a in sorted(active, key=lambda x: (x.started, x.attack_id)):
            sk = self._sketches.get(a.attack_id)
            if sk is None:
                if len(self._sketches) >= self._max:
                    continue
                sk = self._sketches[a.attack_id] = SourceSketch()
                rows = take_rows(window, window["ts"] >= a.started - self._lead) if len(window) else window
            else:
                rows = new
            if len(rows) == 0:
                continue
            mine = addresses_in(rows["dst"], a.target) & np.isin(rows["category"], [int(c) for c in a.categories])
            if mine.any():
                mine &= ~inner_mask(rows, a, active)  # a carpet's host attacks keep their own sources
            if mine.any():
                sk.add(rows["src"][mine], rows["packets"][mine])  # the two columns, not whole rows

    def summary(self, attack_id: int) -> SourceSummary | None:
        sk = self._sketches.get(attack_id)
        return sk.summary() if sk is not None else None
