"""What people read: reports of replayed captures (:mod:`~ddos_shield.ui.report`)."""
