"""alertq: a durable, fast outbox queue that delivers alerts to Prometheus Alertmanager."""

from alertq.driver import AlertDriver, get_alert_driver

__all__ = ["AlertDriver", "get_alert_driver"]
