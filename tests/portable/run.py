# Runs one portable test module under MicroPython (or CPython):
#   micropython -X heapsize=64K tests/portable/run.py test_numbers
#   micropython ... run.py --lib DIR test_numbers   (DIR first on sys.path:
#       tests/test_micropython.py puts mpy-cross output of est_lite and
#       est_lite_mp there, so the code under test loads as .mpy as on a device)
# Calls every test_* function in name order, prints PASS/FAIL lines and a
# closing "N passed, M failed" line; exits 1 if anything failed.
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_root = _here + "/../.."
for p in (_here, _root, _root + "/ports/micropython"):
    if p not in sys.path:
        sys.path.insert(0, p)
# last: est_lite_cpython.codec_server (server-side encoders, plain Python)
# builds test inputs; nothing else of the CPython port is imported here
sys.path.append(_root + "/ports/cpython")


def main(argv):
    if len(argv) > 2 and argv[1] == "--lib":
        sys.path.insert(0, argv[2])
        argv = argv[:1] + argv[3:]
    if len(argv) < 2:
        print("usage: run.py MODULE [TEST ...]")
        sys.exit(2)
    mod = __import__(argv[1])
    only = argv[2:]
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    passed = failed = 0
    for n in names:
        if only and n not in only:
            continue
        fn = getattr(mod, n)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the runner reports every failure
            failed += 1
            print("FAIL", n)
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)
            else:
                import traceback

                traceback.print_exc()
        else:
            passed += 1
            print("PASS", n)
    print("%d passed, %d failed" % (passed, failed))
    if failed or not passed:
        sys.exit(1)


main(sys.argv)
