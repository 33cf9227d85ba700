# est-lite CPython port: crypto on `cryptography`, TLS/DTLS transports,
# reference server, CA, proxy and the `est-lite` command.
