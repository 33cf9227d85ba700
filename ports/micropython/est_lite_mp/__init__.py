# est-lite MicroPython port: pure-Python P-256, `tls` transports.
