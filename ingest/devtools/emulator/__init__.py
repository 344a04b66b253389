"""An emulator of the ACRCloud Console API v2 bucket-files endpoints, with fault injection.

Real HTTP on loopback (Werkzeug), in-memory state, Laravel-shaped answers as in the vendor's examples
(tests/fixtures/vendor-files-api.zh.txt). ``Emulator`` runs it in a background thread; ``serve()`` and
``python -m ingest.devtools.emulator`` run it in the foreground.
"""

from ingest.devtools.emulator.faults import Faults
from ingest.devtools.emulator.server import Emulator, serve

__all__ = ["Emulator", "Faults", "serve"]
