"""Local Buttondown-compatible Exports API and events-export generator.

``SandboxServer`` replaces ``https://api.buttondown.com/v1`` in demos and
tests. ``write_events_export`` writes the kind of ZIP file that the server
returns, for tests that need a file without a server.
"""

from processor.sandbox.generate import write_events_export
from processor.sandbox.server import SandboxServer

__all__ = ["SandboxServer", "write_events_export"]
