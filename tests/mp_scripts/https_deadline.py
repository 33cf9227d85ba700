# MicroPython: cacerts() over HTTPS with a 3 s deadline against a server that
# trickles its answer (tests/test_mp_https_deadline.py).
import json
import sys

from est_lite.errors import EstError
from est_lite_mp.client import EstClient


def main():
    f = open(sys.argv[1])
    cfg = json.load(f)
    f.close()
    f = open(cfg["trust"], "rb")
    trust = [f.read()]
    f.close()
    c = EstClient(cfg["server"], trust=trust, deadline=cfg["deadline"])
    try:
        c.cacerts()
        print("NO ERROR")
    except EstError as e:
        print("ERR %s: %s" % (type(e).__name__, e))
    c.close()
    print("DONE")


main()
