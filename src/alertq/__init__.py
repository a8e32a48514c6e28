"""alertq: a durable, fast outbox queue that delivers alerts to Prometheus Alertmanager."""

from alertq.alerts import InvalidAlertPayload
from alertq.driver import AlertDriver, get_alert_driver
from alertq.enqueue import enqueue_alert

__all__ = ["AlertDriver", "InvalidAlertPayload", "enqueue_alert", "get_alert_driver"]
