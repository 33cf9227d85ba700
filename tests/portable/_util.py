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


def vector(name):
    """One payload of RFC 9148 Appendix A/B from tests/vectors, as bytes."""
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    parts = []
    found = False
    with open(here + "/../vectors/rfc9148_appendix.txt") as f:
        for line in f:
            line = line.strip()
            if line[:1] == "[":
                if found:
                    break
                found = line == "[" + name + "]"
            elif found and line[:1] != "#":
                parts.append(line)
    assert found, name
    return unhex("".join(parts))


def coap_roundtrip(wire):
    """Decode a CoAP datagram, check both encoders give the same bytes back
    (encode_into at an offset, touching nothing around it); the Message."""
    from est_lite import coap

    m = coap.decode(wire)
    assert m.encode() == wire
    buf = bytearray(len(wire) + 7)
    assert m.encode_into(buf, 3) == 3 + len(wire)
    assert bytes(buf[3 : 3 + len(wire)]) == wire
    assert buf[:3] == bytearray(3) and buf[-4:] == bytearray(4)
    return m
