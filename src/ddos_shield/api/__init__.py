"""The management service: the REST API, the dashboard and the Prometheus metrics."""
