import sys
from pathlib import Path

# Lets the tests import the plugin before it is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
