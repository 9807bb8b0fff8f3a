#!/usr/bin/python3
"""Writes seed corpora for Kiln's fuzz targets into fuzz/corpus/TARGET/ (not committed: run `fuzz/seeds.py`).

Seeds are small well-formed inputs that the fuzzer mutates from: hand-built ELF files and, where musl-gcc is
installed, a real static program and a shared object; root file system images of both format versions; manifests,
tag files and instance records; Kiln.toml files; Ethernet frames and IP packets (ARP, UDP, TCP, IPv6); ext2 volumes
made by mkfs.ext2 and filled by debugfs (where e2fsprogs is installed); tar layers with whiteouts and links, plain and
gzipped; an OCI archive and a docker archive. Targets whose input is structured (hypercall, virtio_*, rewrite) start
from nothing."""

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pad8(b):
    return b + b"\0" * (-len(b) % 8)


# --- ELF -------------------------------------------------------------------------------------------------------------
TEXT = 0x400000
EXIT_7 = bytes([0xB8, 60, 0, 0, 0, 0xBF, 7, 0, 0, 0, 0x0F, 0x05])


def elf(kind=2, text_mem=0x1000, interp=None, sections=True):
    """A static executable as crates/vmm's loader tests build one: text (headers and code), data with bss, .text."""
    f = bytearray(0x2000)
    phnum = 2 + (1 if interp else 0)
    f[0:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", f, 16, kind, 62, 1, TEXT + 0x100, 64, 0x1800 if sections else 0, 0, 64, 56,
                     phnum, 64, 3 if sections else 0, 2 if sections else 0)
    segs = [(1, 5, 0, TEXT, 0x1000, text_mem), (1, 6, 0x1000, TEXT + ((text_mem + 0xFFF) & ~0xFFF), 0x100, 0x3000)]
    if interp:
        f[0x1600:0x1600 + len(interp) + 1] = interp + b"\0"
        segs.append((3, 4, 0x1600, TEXT + 0x1600, len(interp) + 1, len(interp) + 1))
    for i, (ptype, flags, off, vaddr, filesz, memsz) in enumerate(segs):
        struct.pack_into("<IIQQQQQQ", f, 64 + 56 * i, ptype, flags, off, vaddr, vaddr, filesz, memsz, 0x1000)
    for i in range(8):
        f[0x100 + 16 * i:0x100 + 16 * i + 12] = EXIT_7
    if sections:
        f[0x1700:0x1711] = b"\0.text\0.shstrtab\0"
        struct.pack_into("<IIQQQQIIQQ", f, 0x1840, 1, 1, 6, TEXT + 0x100, 0x100, 0x80, 0, 0, 16, 0)
        struct.pack_into("<IIQQQQIIQQ", f, 0x1880, 7, 3, 0, 0, 0x1700, 17, 0, 0, 1, 0)
    return bytes(f)


def elf_seeds():
    put("elf_loader", "exec", elf())
    put("elf_loader", "pie", elf(kind=3))
    put("elf_loader", "no-sections", elf(sections=False))
    put("elf_loader", "huge-span", elf(text_mem=32 << 30))
    put("elf_loader", "dynamic", elf(interp=b"/lib/ld-musl-x86_64.so.1"))
    put("uefi_payload", "pvh", pvh_elf())
    put("uefi_payload", "exec", elf())
    cc = shutil.which("musl-gcc")
    if not cc:
        print("seeds: musl-gcc not found: no compiled ELF seeds", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "s.c")
        with open(src, "w") as f:
            f.write("#include <unistd.h>\nint f(int x){return x+1;}\n"
                    "int main(void){write(1,\"hi\\n\",3);return f(1);}\n")
        for name, args in [("musl-static", ["-static", "-Os", "-s"]), ("musl-shared", ["-shared", "-fPIC", "-Os", "-s"])]:
            out = os.path.join(tmp, name)
            if subprocess.run([cc, *args, "-o", out, src], capture_output=True).returncode == 0:
                with open(out, "rb") as f:
                    put("elf_loader", name, f.read())


def pvh_elf():
    """What `kiln export --format pvh` writes, in small: two PT_LOADs at 16 MiB and the PVH entry note."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x100_0040)
    phnum = 3
    data_at = 64 + phnum * 56 + 32
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x100_0040, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = b""
    ph += struct.pack("<IIQQQQQQ", 1, 7, data_at, 0x100_0000, 0x100_0000, 16, 0x2000, 16)
    ph += struct.pack("<IIQQQQQQ", 1, 7, data_at + 16, 0x100_2000, 0x100_2000, 16, 16, 16)
    ph += struct.pack("<IIQQQQQQ", 4, 4, 64 + phnum * 56, 0, 0, len(note), len(note), 4)
    body = ehdr + ph + note
    body += bytes(data_at - len(body))
    return body + b"\x90" * 16 + b"\xcc" * 16 + bytes(range(40)) * 3


# --- root file system --------------------------------------------------------------------------------------------
def rootfs_v2(entries):
    index_len = sum(32 + len(pad8(p)) for _, p, _ in entries)
    index_end = 16 + index_len
    data_start = (index_end + 4095) & ~4095 if any(d for _, _, d in entries) else index_end
    index, data = b"", b""
    for kind, path, body in entries:
        index += struct.pack("<IIIIQQ", kind, 0o644, len(path), 0, data_start + len(data), len(body)) + pad8(path)
        data += pad8(body)
    out = b"KILNFS2\0" + struct.pack("<Q", index_end) + index
    return out + b"\0" * (data_start - len(out)) + data


def rootfs_v1(entries):
    out = b"KILNFS1\0"
    for kind, path, body in entries:
        out += struct.pack("<IIIIQ", kind, 0o644, len(path), 0, len(body)) + pad8(path) + pad8(body)
    return out


def rootfs_seeds():
    entries = [(1, b"/etc", b""), (2, b"/etc/app.conf", b"key = 1\n"), (3, b"/etc/link", b"app.conf"),
               (1, b"/srv", b""), (2, b"/srv/index.html", b"<p>hi</p>\n" * 20)]
    put("rootfs", "v2", rootfs_v2(entries))
    put("rootfs", "v1", rootfs_v1(entries))
    put("rootfs", "empty", rootfs_v2([]))


# --- image store records -----------------------------------------------------------------------------------------
def image_seeds():
    blob = lambda b: {"digest": "sha256:" + hashlib.sha256(b).hexdigest(), "size": len(b)}
    manifest = {"schema": 1, "name": "hello", "kiln_version": "0.1.0", "boot_version": 1, "kernel": blob(b"k"),
                "program": blob(b"p"), "prepared": blob(b"q"), "rootfs": blob(b"r"),
                "config": {"args": ["/hello", "1"], "env": {"A": "b"}, "memory": 67108864, "cpus": 1,
                           "ports": ["8080:80"], "volumes": {"data": "/data"}, "workdir": "/"}}
    put("image_records", "manifest", b"\0" + json.dumps(manifest, indent=2).encode())
    put("image_records", "tag", b"\1sha256:" + hashlib.sha256(b"x").hexdigest().encode() + b"\n")
    put("image_records", "reference", b"\1library/web+x:v1.2")
    record = {"id": "0123456789ab", "name": "web", "image": "web:latest", "image_id": None, "command": ["/web"],
              "ports": ["8080:80"], "state": "running", "pid": 1234, "pid_start": 99, "created_ms": 1, "started_ms": 2,
              "finished_ms": None, "exit_code": None, "reason": None, "auto_remove": False,
              "launch": {"memory": 1}}
    put("image_records", "instance", b"\2" + json.dumps(record).encode())
    put("image_records", "size", b"\4128M")


# --- Kiln.toml ---------------------------------------------------------------------------------------------------
def kiln_toml_seeds():
    put("kiln_toml", "full", b'''name = "web"
binary = "target/x86_64-unknown-linux-musl/release/web"
args = ["--port", "80"]
env = { RUST_LOG = "info" }
workdir = "/srv"
files = { "conf/app.toml" = "/etc/app.toml" }
dirs = { static = "/srv/static" }
memory = "128M"
cpus = 2
ports = ["8080:80", "127.0.0.1:5353:53/udp"]
volumes = { data = "/data" }
''')
    put("kiln_toml", "cargo", b'name = "a/b"\nbinary = { cargo = "server", bin = "web" }\nmemory = 1048576\n')
    put("kiln_toml", "from", b'name = "c"\nfrom = "docker-archive:app.tar:repo:tag"\n[env]\nX = "1"\n')


# --- frames and packets -----------------------------------------------------------------------------------------
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4(proto, src, dst, sport, dport, body, tcp_flags=None):
    if tcp_flags is None:
        seg = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    else:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, tcp_flags, 65535, 0, 0) + body
    if len(src) == 4:
        pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, proto, len(seg))
    else:
        pseudo = bytes(src) + bytes(dst) + struct.pack("!IxxxB", len(seg), proto)
    c = csum(pseudo + seg)
    at = 6 if tcp_flags is None else 16
    return seg[:at] + struct.pack("!H", c) + seg[at + 2:]


def ipv6(src, dst, proto, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, bytes(src), bytes(dst)) + payload


def eth(ethertype, payload):
    return bytes.fromhex("525500000202") + bytes.fromhex("525400123456") + struct.pack("!H", ethertype) + payload


def frame_seeds():
    guest, gw, peer = [10, 0, 2, 15], [10, 0, 2, 2], [93, 184, 216, 34]
    g6 = [0xFD] + [0] * 14 + [0x15]
    p6 = [0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1]
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes.fromhex("525400123456"), bytes(guest), b"\0" * 6,
                      bytes([10, 0, 2, 7]))
    packets = {
        "udp": ipv4(guest, peer, 17, l4(17, guest, peer, 5000, 53, b"query")),
        "syn": ipv4(guest, gw, 6, l4(6, guest, gw, 40000, 80, b"", 0x02)),
        "ack": ipv4(guest, gw, 6, l4(6, guest, gw, 40000, 80, b"data", 0x10)),
        "udp6": ipv6(g6, p6, 17, l4(17, g6, p6, 5000, 53, b"query6")),
        "syn6": ipv6(g6, p6, 6, l4(6, g6, p6, 40001, 443, b"", 0x02)),
    }
    put("usernet_frame", "arp", eth(0x0806, arp))
    for name, packet in packets.items():
        put("usernet_frame", name, eth(0x86DD if name.endswith("6") else 0x0800, packet))
    # sockets_frame: packets to the guest, each behind a two-byte length (high bit: an Ethernet frame).
    to_guest = {
        "syn": ipv4(peer, guest, 6, l4(6, peer, guest, 1234, 80, b"", 0x02)),
        "synack": ipv4(gw, guest, 6, l4(6, gw, guest, 80, 40000, b"", 0x12)),
        "dns": ipv4(peer, guest, 17, l4(17, peer, guest, 53, 53, b"answer")),
        "syn6": ipv6(p6, g6, 6, l4(6, p6, g6, 1234, 80, b"", 0x02)),
    }
    every = b""
    for name, packet in to_guest.items():
        framed = struct.pack("!H", len(packet)) + packet
        put("sockets_frame", name, framed)
        every += framed
    put("sockets_frame", "all", every + struct.pack("!H", 0x8000 | 14 + 20) + eth(0x0800, to_guest["syn"][:20]))


# --- ext2 volumes ------------------------------------------------------------------------------------------------
def ext2_seeds():
    mkfs, debugfs = shutil.which("mkfs.ext2") or "/usr/sbin/mkfs.ext2", shutil.which("debugfs") or "/usr/sbin/debugfs"
    if not (os.path.exists(mkfs) and os.path.exists(debugfs)):
        print("seeds: e2fsprogs not found: no ext2 seeds", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        content = os.path.join(tmp, "content")
        with open(content, "wb") as f:
            f.write(b"0123456789abcdef" * 900)
        for name, kib, args in [("1k", 128, ["-b", "1024", "-N", "32"]), ("4k-small", 256, ["-b", "4096", "-N", "16"])]:
            img = os.path.join(tmp, name)
            with open(img, "wb") as f:
                f.truncate(kib << 10)
            r = subprocess.run([mkfs, "-q", "-F", "-I", "128", "-O", "^dir_index,^resize_inode", "-E",
                                "root_owner=0:0", *args, img], capture_output=True)
            if r.returncode != 0:
                print("seeds: mkfs.ext2:", r.stderr.decode().strip(), file=sys.stderr)
                continue
            cmds = "mkdir d\nmkdir d/e\nwrite %s d/file\nwrite %s big\nsymlink link d/file\n" \
                   "symlink d/slow %s\nmknod fifo p\nln big d/hard\n" % (content, content, "x" * 100)
            subprocess.run([debugfs, "-w", "-f", "-", img], input=cmds.encode(), capture_output=True)
            with open(img, "rb") as f:
                put("ext2", name, f.read())


# --- container layers and archives -------------------------------------------------------------------------------
def tar_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = data.decode()
                t.addfile(info)
    return buf.getvalue()


LAYER = [("bin", tarfile.DIRTYPE, b""), ("bin/sh", tarfile.REGTYPE, b"\x7fELF..."), ("usr", tarfile.DIRTYPE, b""),
         ("usr/bin", tarfile.DIRTYPE, b""), ("usr/bin/app", tarfile.REGTYPE, b"app"),
         ("usr/bin/link", tarfile.SYMTYPE, b"app"), ("usr/bin/hard", tarfile.LNKTYPE, b"usr/bin/app"),
         ("etc", tarfile.DIRTYPE, b""), ("etc/.wh.gone", tarfile.REGTYPE, b""), ("var/.wh..wh..opq", tarfile.REGTYPE, b"")]


def container_seeds():
    layer = tar_of(LAYER)
    put("container_layer", "plain", layer)
    put("container_layer", "gzip", gzip.compress(layer, mtime=0))
    sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/usr/bin/app"], "Cmd": ["-x"], "Env": ["PATH=/usr/bin:/bin"],
                                    "WorkingDir": "/"},
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    gz = gzip.compress(layer, mtime=0)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz),
                                       "size": len(gz)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
    blob = lambda b: ("blobs/sha256/" + hashlib.sha256(b).hexdigest(), tarfile.REGTYPE, b)
    oci = tar_of([("oci-layout", tarfile.REGTYPE, b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", tarfile.REGTYPE, index),
                  blob(manifest), blob(config), blob(gz)])
    put("container_archive", "oci", b"\0" + oci)
    docker_manifest = json.dumps([{"Config": "config.json", "RepoTags": ["app:1"], "Layers": ["l/layer.tar"]}]).encode()
    docker = tar_of([("manifest.json", tarfile.REGTYPE, docker_manifest), ("config.json", tarfile.REGTYPE, config),
                     ("l", tarfile.DIRTYPE, b""), ("l/layer.tar", tarfile.REGTYPE, layer)])
    put("container_archive", "docker", b"\1" + docker)


if __name__ == "__main__":
    for seeds in [elf_seeds, rootfs_seeds, image_seeds, kiln_toml_seeds, frame_seeds, ext2_seeds, container_seeds]:
        seeds()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        print("seeds: %-18s %d" % (target, len(files)))
