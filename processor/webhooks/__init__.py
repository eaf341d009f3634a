"""Webhooks from Buttondown: ``signature`` signs and verifies deliveries."""

from processor.webhooks.signature import SIGNATURE_HEADER, sign, verify

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]
