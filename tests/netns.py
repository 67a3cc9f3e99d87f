"""Network faults with the kernel's own tools: namespaces, veth pairs, ``tc netem``, ``nft``.

A ``NetLab`` gives Valkey its own network namespace and joins it to the host namespace
with one veth pair per client (each daemon replica, the load generator): the client
reaches Valkey at its link's address, so a fault put on one link touches that client
only. Faults:

- ``partition(link, direction)``: ``nft`` drops the link's packets towards Valkey, from
  Valkey, or both (TCP connections stall and retransmit, as on a real partition);
- ``loss(link, percent)``: ``nft`` drops that share of the link's packets at random, both
  ways (``numgen random``);
- ``netem(link, "delay 200ms 100ms")``: a ``tc netem`` qdisc on both ends of the link
  (delay, jitter, loss, reordering as ``tc-netem(8)`` spells them).

It needs root. A missing tool or kernel feature raises ``NetFaultUnavailable`` with one
line naming it. Everything made (namespace, veths, qdiscs, nft rules, which all live in
or hang off the namespace) is removed by ``close()``, by the context manager, at exit, and
by the next lab of a later run if a process died before it could clean up.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "lcnf"  # namespaces are named lcnf-<pid>-<n>; veths lc<pid in hex>n<n>h<i> (host end)
Direction = Literal["both", "to_redis", "from_redis"]


class NetFaultUnavailable(RuntimeError):
    """A tool or kernel feature the network-fault harness needs is missing (one line)."""


def _fail(what: str, result: subprocess.CompletedProcess[str]) -> NetFaultUnavailable:
    detail = (result.stderr or result.stdout).strip().splitlines()
    return NetFaultUnavailable(f"{what}: {detail[0] if detail else f'exit {result.returncode}'}")


def run(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    """Run a tool; a failure raises ``NetFaultUnavailable`` naming the command."""
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise _fail(" ".join(argv[:4]), result)
    return result.stdout


def require_tools(*tools: str) -> None:
    """Root and each tool present, or ``NetFaultUnavailable`` naming the first missing."""
    if os.geteuid() != 0:
        raise NetFaultUnavailable("network faults need root (namespaces, veth, nft, tc)")
    for tool in tools:
        if shutil.which(tool) is None:
            package = {"nft": "nftables", "ip": "iproute2", "tc": "iproute2"}.get(tool, tool)
            raise NetFaultUnavailable(
                f"{tool}: not installed (Debian package {package}; `make netfault-tools`)"
            )


def remove_stale_labs() -> None:
    """Delete namespaces left by labs whose process is gone (it was killed mid-run)."""
    for line in run("ip", "netns", "list", check=False).splitlines():
        match = re.fullmatch(rf"({PREFIX}-(\d+)-\d+)(?: \(id: \d+\))?", line.strip())
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            run("ip", "netns", "del", match.group(1), check=False)


@dataclass
class Link:
    """A veth pair: ``host_dev``/``client_ip`` in the host namespace, ``lab_dev``/``ip``
    (Valkey's address for this client) in the lab's namespace."""

    name: str
    index: int
    host_dev: str
    lab_dev: str
    client_ip: str
    ip: str
    drop_to_redis: bool = False
    drop_from_redis: bool = False
    loss_percent: int = 0
    netem: str = ""


@dataclass
class NetLab:
    """Valkey's network namespace with one veth pair per client, and the faults on them."""

    links: dict[str, Link] = field(default_factory=dict)
    ns: str = ""
    number: int = 0

    def __post_init__(self) -> None:
        require_tools("ip", "tc", "nft")
        remove_stale_labs()
        taken = set(run("ip", "netns", "list").split())
        self.number = next(n for n in range(1, 250) if f"{PREFIX}-{os.getpid()}-{n}" not in taken)
        self.ns = f"{PREFIX}-{os.getpid()}-{self.number}"
        # The second octet tells labs of concurrent runs apart; /30s are cut from it.
        used = run("ip", "-o", "-4", "addr").split()
        octet = next(o for o in range(200, 256) if not any(f"10.{o}." in a for a in used))
        self._net = f"10.{octet}.0"
        run("ip", "netns", "add", self.ns)
        atexit.register(self.close)
        self.lab("ip", "link", "set", "lo", "up")
        self._nft_base()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lab(self, *argv: str, check: bool = True, stdin: str | None = None) -> str:
        """Run a tool inside the lab's namespace."""
        return run("ip", "netns", "exec", self.ns, *argv, check=check, stdin=stdin)

    def exec_argv(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside the lab's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def dev(self, end: str, index: str) -> str:
        """A veth name unique on the machine (at most 15 characters): process, lab, end."""
        return f"lc{os.getpid():x}n{self.number}{end}{index}"

    def add_link(self, name: str) -> Link:
        i = len(self.links)
        link = Link(
            name,
            i,
            host_dev=self.dev("h", str(i)),
            lab_dev=self.dev("v", str(i)),
            client_ip=f"{self._net}.{4 * i + 1}",
            ip=f"{self._net}.{4 * i + 2}",
        )
        run("ip", "link", "add", link.host_dev, "type", "veth", "peer", "name", link.lab_dev)
        run("ip", "link", "set", link.lab_dev, "netns", self.ns)
        run("ip", "addr", "add", f"{link.client_ip}/30", "dev", link.host_dev)
        run("ip", "link", "set", link.host_dev, "up")
        self.lab("ip", "addr", "add", f"{link.ip}/30", "dev", link.lab_dev)
        self.lab("ip", "link", "set", link.lab_dev, "up")
        self.links[name] = link
        return link

    # Faults

    def partition(self, link: Link, direction: Direction = "both") -> None:
        link.drop_to_redis = direction in ("both", "to_redis")
        link.drop_from_redis = direction in ("both", "from_redis")
        self._nft_rules()

    def heal(self, link: Link) -> None:
        link.drop_to_redis = link.drop_from_redis = False
        self._nft_rules()

    def loss(self, link: Link, percent: int) -> None:
        link.loss_percent = percent
        self._nft_rules()

    def netem(self, link: Link, spec: str) -> None:
        """``tc qdisc replace … netem <spec>`` on both ends of the link ('' removes it)."""
        if shutil.which("modprobe"):
            run("modprobe", "sch_netem", check=False)
        for prefix, dev in ((["ip", "netns", "exec", self.ns], link.lab_dev), ([], link.host_dev)):
            if spec:
                argv = [*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "netem"]
                result = subprocess.run(
                    [*argv, *spec.split()], capture_output=True, text=True, check=False
                )
                if "unknown" in result.stderr.lower():
                    raise NetFaultUnavailable(
                        "tc netem: this kernel has no netem qdisc (sch_netem, CONFIG_NET_SCH_NETEM)"
                    )
                if result.returncode != 0:
                    raise _fail("tc qdisc replace netem", result)
            else:
                subprocess.run(
                    [*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                    capture_output=True,
                    check=False,
                )
        link.netem = spec

    def netem_available(self) -> bool:
        """Whether the kernel has ``sch_netem`` (tried on a scratch veth of the lab)."""
        probe = Link("probe", 99, self.dev("h", "p"), self.dev("v", "p"), "", "")
        run("ip", "link", "add", probe.host_dev, "type", "veth", "peer", "name", probe.lab_dev)
        try:
            result = subprocess.run(
                ["tc", "qdisc", "add", "dev", probe.host_dev, "root", "netem", "delay", "1ms"],
                capture_output=True,
                text=True,
                check=False,
            )
            return result.returncode == 0
        finally:
            run("ip", "link", "del", probe.host_dev, check=False)

    def _nft_base(self) -> None:
        self.lab(
            "nft",
            "-f",
            "-",
            stdin=(
                "table inet lcnf {\n"
                "  chain input { type filter hook input priority 0; policy accept; }\n"
                "  chain output { type filter hook output priority 0; policy accept; }\n"
                "}\n"
            ),
        )

    def _nft_rules(self) -> None:
        """Rewrite the lab's rules from every link's state, in one nft transaction."""
        lines = ["flush chain inet lcnf input", "flush chain inet lcnf output"]
        for link in self.links.values():
            into = f'add rule inet lcnf input iifname "{link.lab_dev}"'
            out = f'add rule inet lcnf output oifname "{link.lab_dev}"'
            if link.drop_to_redis:
                lines.append(f"{into} drop")
            if link.drop_from_redis:
                lines.append(f"{out} drop")
            if link.loss_percent:
                lines.append(f"{into} numgen random mod 100 < {link.loss_percent} drop")
                lines.append(f"{out} numgen random mod 100 < {link.loss_percent} drop")
        self.lab("nft", "-f", "-", stdin="\n".join(lines) + "\n")

    def close(self) -> None:
        """Remove the namespace: its veths (both ends), qdiscs and nft rules go with it."""
        if not self.ns:
            return
        for link in self.links.values():
            run("ip", "link", "del", link.host_dev, check=False)
        run("ip", "netns", "del", self.ns, check=False)
        self.ns = ""
        atexit.unregister(self.close)
