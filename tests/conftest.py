"""Test settings shared by every test.

The test command runs the notebooks (through nbval) in their quick setting, on a
subset of the images; a plain ``pytest`` call gets the same default.
"""
import os

os.environ.setdefault("COURSE_QUICK", "1")

import helpers  # noqa: E402,F401  (TensorFlow switches before anything imports TensorFlow)
