#!/usr/bin/env python3
"""A TLS client for the SNI routing tests: a full handshake, verified against a CA, through
the balancer, with control over how the ClientHello travels.

Usage: tls_client.py PORT CA_FILE SNI [--chunk N] [--records N] [--any-name]

SNI "-" sends no server_name extension. The handshake runs over memory BIOs so that the
ClientHello bytes can be shaped before they are sent: --records N re-frames the hello into
TLS records of at most N bytes each (the handshake message is unchanged, so the handshake
still verifies), --chunk N writes the first flight N bytes at a time (TCP_NODELAY, 1 ms
apart: many tiny segments). The certificate chain is always verified against CA_FILE; the
name too unless --any-name (needed without SNI, or for a name no backend has). On success
prints the line the server sent (its id) and exits 0; on failure prints the error, exit 1.
"""
import argparse
import socket
import ssl
import sys
import time


def reframe(flight, size):
    """The first flight (one handshake record) re-cut into records of at most `size` bytes."""
    if len(flight) < 5 or flight[0] != 22:
        return flight
    length = int.from_bytes(flight[3:5], "big")
    payload, rest = flight[5:5 + length], flight[5 + length:]
    out = bytearray()
    for i in range(0, len(payload), size):
        piece = payload[i:i + size]
        out += bytes([22, 3, 1]) + len(piece).to_bytes(2, "big") + piece
    return bytes(out) + rest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("ca")
    p.add_argument("sni")
    p.add_argument("--chunk", type=int, default=0)
    p.add_argument("--records", type=int, default=0)
    p.add_argument("--any-name", action="store_true")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.ca)
    if a.any_name or a.sni == "-":
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=None if a.sni == "-" else a.sni)
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = True

    def flush():
        nonlocal first
        data = outgoing.read()
        if not data:
            return
        if first:
            first = False
            if a.records:
                data = reframe(data, a.records)
            if a.chunk:
                for i in range(0, len(data), a.chunk):
                    sock.sendall(data[i:i + a.chunk])
                    time.sleep(0.001)
                return
        sock.sendall(data)

    def pump():
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the peer")
        incoming.write(data)

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        flush()
        while True:
            try:
                line = tls.read(1024)
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        print(line.decode().strip(), flush=True)
        return 0
    except (OSError, ssl.SSLError, ConnectionError) as e:
        print("error:", e, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
