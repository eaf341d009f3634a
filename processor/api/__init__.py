"""Client for Buttondown's Exports API."""

from processor.api.client import ExportsClient
from processor.api.models import Export, ExportPage

__all__ = ["Export", "ExportPage", "ExportsClient"]
