"""Installs tests/dist/device_rule.py in every rank process (RANK set) when MASSIVE_MT_DEVICE_RULE names
a directory: put tests/dist/site on PYTHONPATH (tests/test_devices.py does)."""
import os
import sys

if os.environ.get("MASSIVE_MT_DEVICE_RULE") and "RANK" in os.environ:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import device_rule
    device_rule.install(os.environ["MASSIVE_MT_DEVICE_RULE"])
