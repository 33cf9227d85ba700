"""`.mpy` size of each portable core module (est_lite/*.py) and the total.

    python bench/core_size.py

Prints a table, then one JSON object on the last line:
{"mpy_total_bytes": N, "modules": {"coap": N, ...}, "target_bytes": 16384}
"""

import json
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _mp  # noqa: E402

TARGET = 16 * 1024


def main():
    _mp.need_tools()
    modules = {}
    for py in sorted((_mp.ROOT / "est_lite").glob("*.py")):
        modules[py.stem] = _mp.mpy_size(py)
    total = sum(modules.values())
    for name, size in modules.items():
        print("%-12s %6d" % (name, size))
    print("%-12s %6d (target <= %d)" % ("total", total, TARGET))
    print(json.dumps({"mpy_total_bytes": total, "modules": modules, "target_bytes": TARGET, "within_target": total <= TARGET}))


if __name__ == "__main__":
    main()
