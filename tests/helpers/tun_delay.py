#!/usr/bin/env python3
"""Delay relay between two TUN devices, for tests that need a slow network path (this kernel
has no netem qdisc).

Usage: tun_delay.py TUN_A TUN_B DELAY_MS [JITTER_MS]

Creates the two TUN devices (IFF_TUN | IFF_NO_PI; not persistent, so they vanish with this
process), prints "ready", then copies every IP packet read from one device to the other
DELAY_MS milliseconds later, in both directions: a TCP handshake through the pair takes
2 x DELAY_MS longer. With JITTER_MS, each packet waits DELAY_MS plus a uniform random extra of
0..JITTER_MS, so packets also overtake each other (reordering), as on a jittery path. The
test moves TUN_B into a network namespace and routes to it through TUN_A. Exits when its stdin
closes (the test ended or died), after printing "relayed N packets, M reordered" (M: packets
written after a packet that had arrived later in the same direction), or after MAX_LIFETIME_S.
"""
import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# A test never needs the relay longer; bounds a relay whose test was killed uncleanly.
MAX_LIFETIME_S = 300
# Packets per device per wake-up, so one direction cannot starve the other.
BURST = 64


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    a, b = open_tun(sys.argv[1]), open_tun(sys.argv[2])
    delay = float(sys.argv[3]) / 1000.0
    jitter = float(sys.argv[4]) / 1000.0 if len(sys.argv) == 5 else 0.0
    other = {a: b, b: a}
    print("ready", flush=True)
    queue = []  # (due, seq, fd to write, packet)
    seq = 0
    # Per device written to: the highest arrival number written so far.
    last = {a: -1, b: -1}
    relayed = reordered = 0
    end = time.monotonic() + MAX_LIFETIME_S
    while time.monotonic() < end:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        ready, _, _ = select.select([a, b, 0], [], [], timeout)
        if 0 in ready and not os.read(0, 4096):
            print(f"relayed {relayed} packets, {reordered} reordered", flush=True)
            return 0
        now = time.monotonic()
        for fd in (a, b):
            if fd not in ready:
                continue
            for _ in range(BURST):
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                due = now + delay + (random.uniform(0.0, jitter) if jitter else 0.0)
                heapq.heappush(queue, (due, seq, other[fd], packet))
                seq += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, n, fd, packet = heapq.heappop(queue)
            relayed += 1
            if n < last[fd]:
                reordered += 1
            last[fd] = max(last[fd], n)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # device gone or queue full: the packet is lost, as on a real link
    return 0


if __name__ == "__main__":
    sys.exit(main())
