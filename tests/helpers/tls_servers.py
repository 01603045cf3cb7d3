#!/usr/bin/env python3
"""TLS backends for the SNI routing tests: real TLS servers, each with its own certificate.

Usage: tls_servers.py DIR ID=NAME[,NAME...] [ID=NAME...]

Creates a throw-away CA in DIR (ca.crt, the file clients verify against) and, per ID, a key
and a certificate for the given DNS names (subjectAltName) signed by it, with the `openssl`
command. Then listens on 127.0.0.1 (a port from the kernel) for each ID and prints one line
"ID PORT" per server, then "ready". Each connection gets a full TLS handshake (TLS 1.2 or
1.3) with that certificate; then the server writes "ID\\n" and closes. Exits when stdin
closes (the test ended or died) or after MAX_LIFETIME_S.
"""
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time

MAX_LIFETIME_S = 300


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_certs(directory, servers):
    ca_key, ca_crt = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "2",
            "-subj", "/CN=l4lb test CA")
    for ident, names in servers:
        key, csr, crt = (os.path.join(directory, ident + ext) for ext in (".key", ".csr", ".crt"))
        ext = os.path.join(directory, ident + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=" + ",".join("DNS:" + n for n in names) + "\n")
        openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=" + names[0])
        openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)


def serve_one(ctx, conn, ident):
    try:
        conn.settimeout(10)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(ident.encode() + b"\n")
    except (OSError, ssl.SSLError):
        pass  # a refused or broken client is the test's business, not ours
    finally:
        conn.close()


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    directory = sys.argv[1]
    servers = []
    for arg in sys.argv[2:]:
        ident, _, names = arg.partition("=")
        servers.append((ident, names.split(",")))
    make_certs(directory, servers)
    listeners = {}
    for ident, _ in servers:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(directory, ident + ".crt"),
                            os.path.join(directory, ident + ".key"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        listeners[sock.fileno()] = (sock, ctx, ident)
        print(ident, sock.getsockname()[1], flush=True)
    print("ready", flush=True)
    end = time.monotonic() + MAX_LIFETIME_S
    while time.monotonic() < end:
        ready, _, _ = select.select(list(listeners) + [0], [], [], 1.0)
        if 0 in ready and not os.read(0, 4096):
            return 0
        for fd in ready:
            if fd in listeners:
                sock, ctx, ident = listeners[fd]
                conn, _ = sock.accept()
                threading.Thread(target=serve_one, args=(ctx, conn, ident), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
