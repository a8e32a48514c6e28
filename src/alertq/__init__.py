"""alertq: a durable, fast outbox queue that delivers alerts to Prometheus Alertmanager."""

from alertq.alerts import InvalidAlertPayload
from alertq.driver import AlertDriver, get_alert_driver
from alertq.enqueue import enqueue_alert
from alertq.managed import (
    configure,
    fire,
    fire_sync,
    heartbeat,
    heartbeat_sync,
    resolve,
    resolve_sync,
)

__all__ = [
    "AlertDriver",
    "InvalidAlertPayload",
    "configure",
    "enqueue_alert",
    "fire",
    "fire_sync",
    "get_alert_driver",
    "heartbeat",
    "heartbeat_sync",
    "resolve",
    "resolve_sync",
]
