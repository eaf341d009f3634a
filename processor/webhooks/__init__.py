"""Webhooks from Buttondown: receive deliveries and start or speed up runs.

signature   HMAC-SHA256 of the body in ``X-Buttondown-Signature``
deliveries  the delivery body, decoded and checked
receiver    verify, deduplicate by delivery id, enqueue (web process)
app         the ASGI application served by ``processor web``
server      uvicorn with deadlines and limits on connections
actors      route deliveries and start scheduled runs (workers)
schedule    the slots that coalesce ``email.sent`` bursts into runs
"""

from processor.webhooks.signature import SIGNATURE_HEADER, sign, verify

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]
