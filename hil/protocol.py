"""The HIL result line protocol on the host: parser and encoder.

The board side is `hil/device/hil_proto.py` (portable, shipped in the
bundle); this module loads the same file, so both ends share one
definition. Format and rules: see that file.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("hil_proto", pathlib.Path(__file__).parent / "device" / "hil_proto.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

PREFIX = _mod.PREFIX
Parser = _mod.Parser
Record = _mod.Record
Emitter = _mod.Emitter
encode = _mod.encode
crc32 = _mod.crc32
