"""Post-publishing processor for Buttondown email events.

The pipeline: a trigger actor requests an ``events`` export, a poller waits
for it to become ready, and a processor downloads the file, parses its event
records and hands each one to the plugin handlers.
"""

__version__ = "0.1.0"
