"""Enforcement backends behind one interface (:class:`~ddos_shield.mitigate.base.Backend`)."""
