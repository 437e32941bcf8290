"""Test-session settings: one JAX compile cache for the whole run, never the user's own."""

import os
import tempfile


def pytest_configure(config):
    # every test, every xdist worker and every `twoway` subprocess a test starts share one fresh
    # compile cache, so a program compiled once in the run is reused, and the user's cache is left alone
    # (workers inherit the controller's environment: the first process to get here chooses the folder)
    if os.environ.get("TWOWAY_TEST_SESSION_CACHE") != "1":
        os.environ["TWOWAY_CACHE_DIR"] = tempfile.mkdtemp(prefix="twoway-test-cache-")
        os.environ["TWOWAY_TEST_SESSION_CACHE"] = "1"
