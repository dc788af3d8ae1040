"""The management service: the REST API, the dashboard and the Prometheus metrics, over a
narrow view of the shield.

* :mod:`~ddos_shield.api.view` -- :class:`ShieldView`, all the service reads and steers;
* :mod:`~ddos_shield.api.tokens` -- API tokens, roles, the hashed token file;
* :mod:`~ddos_shield.api.attacks` -- live and recent attacks, from the event bus;
* :mod:`~ddos_shield.api.app` -- the FastAPI application (routes under ``/api/v1``);
* :mod:`~ddos_shield.api.server` -- uvicorn in a thread of the running shield;
* :mod:`~ddos_shield.api.metrics` -- the Prometheus exposition (``/metrics``).

docs/api.md is the reference for operators.
"""
