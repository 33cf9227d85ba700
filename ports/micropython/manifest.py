# est-lite for MicroPython: the portable core (est_lite) and the MicroPython
# port (est_lite_mp), for freezing into a firmware image:
#
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/est-lite/ports/micropython/manifest.py
#
# or from a board manifest: include("/path/to/est-lite/ports/micropython/manifest.py").
# Build-time generators (est_lite_mp/gen_*.py) are not device code and are
# left out. Without a firmware build, install the .mpy bundle instead
# (est-lite hil bundle, see docs/hil.md) or `mpremote mip install
# ports/micropython/package.json`.
#
# The manifest tool runs this file with the current directory set to the
# directory that holds it (tools/manifestfile.py, include()).
import os

metadata(description="est-lite: EST (RFC 7030/8951) and EST-coaps (RFC 9148) client", version="0.1.0",
         license="MIT")

package("est_lite", base_path="../..")
package("est_lite_mp", files=sorted(f for f in os.listdir("est_lite_mp")
                                    if f.endswith(".py") and not f.startswith("gen_")))
