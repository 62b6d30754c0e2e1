#!/usr/bin/env python3
"""Generate tests/data/placement_golden.tsv from a real nutcracker (twemproxy 0.5.0).

Why: kvrouter must place every key exactly where nutcracker does. This script asks nutcracker
itself: it starts a few memcached instances and one nutcracker with a pool for every
layout x hash x distribution (ketama, modula), each pool on its own loopback port, sets random
keys (non-ASCII bytes and hash tags included) through each pool, then finds which memcached holds
each key by asking every memcached directly. Keys are unique across pools, so pools can share
the memcached instances.

Everything listens on 127.0.0.1 ephemeral ports and is stopped by its own PID.
Standard library only.  Usage: scripts/gen_placement_golden.py [--keys N] [--seed S] [--out PATH]
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HASHES = [
    "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64",
    "fnv1a_64", "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins",
]
DISTS = ["ketama", "modula"]

# Server layouts: (weight, name or None), in config order (deliberately not sorted by name).
# Names of different lengths exercise twemproxy's shorter-first sort; unnamed servers are named
# "127.0.0.1:PORT" by nutcracker. Total weights are not powers of two, so modula depends on the
# high bits of each hash (where sign-extension bugs show).
LAYOUTS = {
    "A": {"hash_tag": "{}", "servers": [(1, "alpha"), (2, None), (1, "b"), (3, "server-delta"), (2, None)]},
    "B": {"hash_tag": None, "servers": [(1, None), (1, None), (1, "zz"), (4, "aaa")]},
    "C": {"hash_tag": "$$", "servers": [(10, "mc-10"), (1, "mc-9"), (7, "mc-1"), (2, None), (1, "mc-100"), (4, None)]},
    # Five servers, total weight 25: float32 gives weight w floorf(w*8 - epsilon)*4 points
    # (28 for weight 1), where double arithmetic would give 32. Only nutcracker's f32 fits.
    "D": {"hash_tag": None, "servers": [(1, "w1"), (2, "w2"), (4, None), (8, "w8"), (10, "w10")]},
}


def which(binary):
    for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"):
        p = os.path.join(d, binary)
        if os.path.exists(p):
            return p
    sys.exit(f"{binary} is not installed")


_TAKEN = set()


def free_port():
    """A loopback port that was free a moment ago, never the same one twice in this run."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def wait_port(port, proc):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def stop(proc):
    proc.kill()  # by this process's own PID
    proc.wait()


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def get_many(self, keys):
        self.send(b"get " + b" ".join(keys) + b"\r\n")
        found = {}
        while True:
            line = self.line()
            if line == b"END":
                return found
            parts = line.split(b" ")
            if parts[0] != b"VALUE":
                raise RuntimeError(f"bad reply {line!r}")
            n = int(parts[3])
            found[parts[1]] = self.exact(n + 2)[:n]


KEY_BYTES = bytes(list(range(0x21, 0x7F)) + list(range(0x80, 0x100)))
ASCII = bytes(range(0x21, 0x7F))


def random_key(rng, tag):
    """A memcached-legal key: no spaces or control bytes; some non-ASCII; some hash tags."""
    n = rng.randint(1, 30)
    alphabet = KEY_BYTES if rng.random() < 0.5 else ASCII
    body = bytes(rng.choice(alphabet) for _ in range(n))
    r = rng.random()
    if tag and r < 0.3:
        inner = bytes(rng.choice(KEY_BYTES) for _ in range(rng.randint(0, 6)))
        inner = inner.replace(tag[:1], b"").replace(tag[1:], b"")
        cut = rng.randint(0, len(body))
        body = body[:cut] + tag[:1] + inner + tag[1:] + body[cut:]
    elif tag and r < 0.35:
        body = body + tag[:1]  # unterminated tag
    return body


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=150, help="keys per layout x hash x distribution")
    ap.add_argument("--seed", type=int, default=20240501)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "placement_golden.tsv"))
    args = ap.parse_args()
    rng = random.Random(args.seed)

    tmp = tempfile.mkdtemp(prefix="kvrouter-golden-")
    procs = []
    try:
        nmc = max(len(l["servers"]) for l in LAYOUTS.values())
        mc_ports = []
        for _ in range(nmc):
            port = free_port()
            cmd = [which("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1", "-m", "64"]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]  # memcached refuses root without -u
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p)
            mc_ports.append(port)

        # One pool per layout x hash x distribution, each on its own port.
        pools = []  # (layout, hash, dist, listen_port, [(name, weight, mc_port)])
        yaml = []
        for lname, layout in LAYOUTS.items():
            servers = []
            for i, (weight, name) in enumerate(layout["servers"]):
                port = mc_ports[i]
                servers.append((name or f"127.0.0.1:{port}", weight, port, name))
            for h in HASHES:
                for d in DISTS:
                    listen = free_port()
                    pname = f"{lname}_{h}_{d}"
                    pools.append((lname, h, d, listen, servers))
                    yaml.append(f"{pname}:")
                    yaml.append(f"  listen: 127.0.0.1:{listen}")
                    yaml.append(f"  hash: {h}")
                    yaml.append(f"  distribution: {d}")
                    if layout["hash_tag"]:
                        yaml.append(f"  hash_tag: \"{layout['hash_tag']}\"")
                    yaml.append("  timeout: 2000")
                    yaml.append("  auto_eject_hosts: false")
                    yaml.append("  servers:")
                    for _, weight, port, name in servers:
                        yaml.append(f"    - 127.0.0.1:{port}:{weight}" + (f" {name}" if name else ""))
        conf = os.path.join(tmp, "nutcracker.yml")
        with open(conf, "w") as f:
            f.write("\n".join(yaml) + "\n")
        nc = subprocess.Popen([which("nutcracker"), "-c", conf, "-s", str(free_port()), "-a", "127.0.0.1",
                               "-o", os.path.join(tmp, "nutcracker.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nc)
        for pool in pools:
            wait_port(pool[3], nc)

        seen = set()
        rows = []
        direct = {port: Conn(port) for port in mc_ports}
        for lname, h, d, listen, servers in pools:
            tag = (LAYOUTS[lname]["hash_tag"] or "").encode()
            keys = []
            while len(keys) < args.keys:
                k = random_key(rng, tag)
                if k not in seen:
                    seen.add(k)
                    keys.append(k)
            c = Conn(listen)
            value = f"{lname}/{h}/{d}".encode()
            req = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value) for k in keys)
            c.send(req)
            for k in keys:
                reply = c.line()
                if reply != b"STORED":
                    raise RuntimeError(f"set {k!r} through {lname}/{h}/{d}: {reply!r}")
            c.s.close()
            where = {}
            for _, _, port, _ in servers:
                for i in range(0, len(keys), 50):
                    for k, v in direct[port].get_many(keys[i:i + 50]).items():
                        assert v == value, (k, v, value)
                        assert k not in where, f"{k!r} on two servers"
                        where[k] = port
            by_port = {port: name for name, _, port, _ in servers}
            for k in keys:
                if k not in where:
                    raise RuntimeError(f"{k!r} not found on any server")
                rows.append((lname, h, d, k.hex(), by_port[where[k]]))

        out = os.path.abspath(args.out)
        with open(out, "w") as f:
            f.write("# Placement golden vectors observed from nutcracker 0.5.0 (twemproxy) in front of real\n")
            f.write("# memcached. Generated by scripts/gen_placement_golden.py; do not edit by hand.\n")
            f.write("# layout\tLAYOUT\tHASH_TAG ('-' for none)\n")
            f.write("# server\tLAYOUT\tNAME\tWEIGHT   (config order; NAME is nutcracker's server name)\n")
            f.write("# key\tLAYOUT\tHASH\tDISTRIBUTION\tKEY_HEX\tEXPECTED_SERVER_NAME\n")
            for lname, layout in LAYOUTS.items():
                f.write(f"layout\t{lname}\t{layout['hash_tag'] or '-'}\n")
                for i, (weight, name) in enumerate(layout["servers"]):
                    f.write(f"server\t{lname}\t{name or f'127.0.0.1:{mc_ports[i]}'}\t{weight}\n")
            for row in rows:
                f.write("key\t" + "\t".join(row) + "\n")
        print(f"wrote {len(rows)} vectors to {out}")
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
