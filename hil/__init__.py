"""est-lite hardware-in-the-loop harness: boards (a virtual board on the
MicroPython unix port, a real board over mpremote), the lossy UDP link,
scenarios, the power-cut campaign, the fleet simulator and the demo.

Layers point one way: hil -> ports -> core. Modules import each other
relatively, so the package works as `hil` from a checkout and under any
name it is installed as.
"""
