"""Local Buttondown-compatible Exports API and events-export generator.

``SandboxServer`` replaces ``https://api.buttondown.com/v1`` in demos and
tests. ``write_events_export`` writes the kind of ZIP file that the server
returns, for tests that need a file without a server. ``FAULTS`` names the
faults that ``SandboxServer(faults=...)`` can inject.
"""

from processor.sandbox.faults import FAULTS, polls_to_ready_for
from processor.sandbox.generate import write_events_export
from processor.sandbox.server import SandboxServer

__all__ = ["FAULTS", "SandboxServer", "polls_to_ready_for", "write_events_export"]
