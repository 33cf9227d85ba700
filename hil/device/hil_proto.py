# est-lite HIL result protocol: one record per text line, so a board can
# report over any serial console (REPL noise, echoes and debug prints in
# between are ignored). Portable: the board emits with Emitter, the host
# parses with Parser (hil/protocol.py re-exports both).
#
#   #HIL <seq> <kind> <json> <crc>
#
# seq: decimal, 0, 1, 2, ... per run (a gap means lost lines); kind: a word
# (hello, step, mark, cut, bye, ...); json: one JSON value without newlines;
# crc: CRC-32 (zlib polynomial) of the bytes "<seq> <kind> <json>" as 8
# lowercase hex digits (a line garbled on the wire is detected, not trusted).
# A run ends with a "bye" record.

import json

PREFIX = "#HIL "

try:
    from binascii import crc32 as _crc32
except ImportError:  # ports built without binascii.crc32
    _crc32 = None


def crc32(data):
    if _crc32 is not None:
        return _crc32(data) & 0xFFFFFFFF
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 & -(c & 1))
    return c ^ 0xFFFFFFFF


def encode(seq, kind, value):
    """One protocol line (str, no line end)."""
    body = "%d %s %s" % (seq, kind, json.dumps(value))
    return "%s%s %08x" % (PREFIX, body, crc32(body.encode()))


class Emitter:
    """Prints records to the console (or calls write(line))."""

    def __init__(self, write=None):
        self.seq = 0
        self.write = write

    def emit(self, kind, value=None):
        line = encode(self.seq, kind, value)
        self.seq += 1
        if self.write is None:
            print(line)
        else:
            self.write(line)


class Record:
    def __init__(self, seq, kind, value):
        self.seq = seq
        self.kind = kind
        self.value = value

    def __repr__(self):
        return "Record(%d, %r, %r)" % (self.seq, self.kind, self.value)


class ProtocolError(Exception):
    pass


class Parser:
    """Feed console text (str or bytes, any chunking); complete lines that
    carry a valid record become Records in .records. Lines without the
    prefix are noise (kept, bounded, in .noise for diagnostics); prefixed
    lines that fail their CRC or do not parse count in .corrupt; records
    out of sequence count in .gaps. max_line bounds a line (a longer one is
    cut off and counted corrupt if it was a record)."""

    def __init__(self, max_line=8192, max_noise=200):
        self.max_line = max_line
        self.max_noise = max_noise
        self.records = []
        self.noise = []
        self.corrupt = 0
        self.gaps = 0
        self._buf = ""
        self._long = False
        self._next = 0

    def feed(self, data):
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8", "replace")
        out = []
        s = self._buf + data
        while True:
            i = s.find("\n")
            if i < 0:
                break
            line = s[:i]
            s = s[i + 1:]
            if self._long:
                self._long = False
                if line.find(PREFIX) >= 0 or self._long_prefix:
                    self.corrupt += 1
                continue
            r = self._line(line)
            if r is not None:
                out.append(r)
        if len(s) > self.max_line:
            self._long_prefix = s.find(PREFIX) >= 0
            self._long = True
            s = ""
        self._buf = s
        return out

    _long_prefix = False

    def close(self):
        """End of input: a last line without a line end is parsed too."""
        out = []
        if self._buf and not self._long:
            r = self._line(self._buf)
            if r is not None:
                out.append(r)
        self._buf = ""
        return out

    def _line(self, line):
        line = line.rstrip("\r")
        i = line.find(PREFIX)
        if i < 0:
            if line.strip() and len(self.noise) < self.max_noise:
                self.noise.append(line)
            return None
        rest = line[i + len(PREFIX):]
        j = rest.rfind(" ")
        if j < 0:
            self.corrupt += 1
            return None
        body, crc = rest[:j], rest[j + 1:]
        try:
            ok = len(crc) == 8 and int(crc, 16) == crc32(body.encode())
        except ValueError:
            ok = False
        parts = body.split(" ", 2)
        if not ok or len(parts) != 3:
            self.corrupt += 1
            return None
        try:
            seq = int(parts[0])
            value = json.loads(parts[2])
        except ValueError:
            self.corrupt += 1
            return None
        if seq != self._next:
            self.gaps += 1
        self._next = seq + 1
        r = Record(seq, parts[1], value)
        self.records.append(r)
        return r

    def find(self, kind):
        """Values of the records of one kind, in order."""
        return [r.value for r in self.records if r.kind == kind]

    @property
    def complete(self):
        return bool(self.records) and self.records[-1].kind == "bye"
