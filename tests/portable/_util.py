# Helpers for portable tests: these files run under CPython (pytest) and
# under the MicroPython unix port (tests/portable/run.py), so they use only
# what both have.
import binascii


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail if it raised none or
    one of another type."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    except Exception as e:  # noqa: BLE001 - reported as a test failure
        raise AssertionError("expected %s, got %s: %s" % (exc_type.__name__, type(e).__name__, e))
    raise AssertionError("expected %s, nothing was raised" % exc_type.__name__)


def unhex(s):
    """bytes from hex text, ignoring whitespace (as printed in RFCs)."""
    return binascii.unhexlify("".join(s.split()))


def b64(s):
    return binascii.a2b_base64("".join(s.split()))
