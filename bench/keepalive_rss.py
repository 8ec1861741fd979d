#!/usr/bin/env python3
"""What a plain HTTP/1.1 keep-alive connection costs a running server.

    python3 bench/keepalive_rss.py PORT COUNT PID [PATH]

Opens COUNT connections to 127.0.0.1:PORT, one after another; with PATH,
each sends one `GET PATH` and reads the answer's head before the next
opens (so no burst of requests in flight inflates the figure), then all
stay open and idle. Prints the growth of the server's VmRSS (process PID)
per connection, 3 s after the last. The baseline for the idle event
streams of bench/streams.sh (see bench/README.md).
"""
import socket
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main():
    port, count, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    path = sys.argv[4] if len(sys.argv) > 4 else None
    before = rss(pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
        if path:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            s.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("the server closed a connection")
                head += chunk
    time.sleep(3)
    grown = rss(pid) - before
    print(f"{count} connections ({path or 'no request'}): {grown / count:.2f} KiB each")


if __name__ == "__main__":
    main()
