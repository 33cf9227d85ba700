# est-lite: portable EST (RFC 7030 / RFC 8951) and EST-coaps (RFC 9148) client core.
# Sans-IO: this package never opens a socket, reads a clock or touches a file.
__version__ = "0.1.0"
