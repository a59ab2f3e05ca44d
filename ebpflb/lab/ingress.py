"""The lab's Ingress controller: nginx (Debian's nginx-light) in lab pods, terminating TLS and
routing by host and path to ClusterIP Services, which ebpflb then balances.

Where it sits: a workload of the lab, like podserver.py, for the Ingress pattern of a cluster:

  external client -> LoadBalancer Service (ebpflb at XDP or TC on the node devices)
    -> ingress pods (this module: nginx, TLS terminated, host and path rules)
    -> ClusterIP Services (nginx connects to the VIP: ebpflb at TC on the ingress pod's veth,
       or at connect() where the node's socket hooks are on; nginx runs in the node's cgroup)
    -> backend pods (the lab's pod servers)

Like a real controller it reads Ingress objects (networking.k8s.io/v1) and the Services they
name from manifests; unlike one it proxies to each Service's ClusterIP rather than to its
endpoints, so that the hop from the ingress pod to the Service is ebpflb's to balance. Each TLS
host gets a certificate from a throwaway CA made here (the `openssl` CLI) instead of the Secret
the Ingress names; the client trusts that CA (`ca_path`) and nothing else.

read_ingresses() and render_nginx_conf() are pure. IngressController runs one nginx per pod,
inside the pod's network namespace and its node's cgroup, with every file it writes (config,
certificates, pid, logs, temp) in one private directory and nothing of /etc/nginx or
/var/lib/nginx used; stop() (also after a failed start) stops the processes and removes the
directory. `python -m ebpflb.lab.ingress up|down` does the same for scripts (scripts/demo.sh).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

log = logging.getLogger(__name__)
# The lab's kernel side (nsops, lab: pyroute2) is imported where a process is started or stopped,
# so that the pure part (read_ingresses, render_nginx_conf) imports, and tests, without it.

INGRESS_API = "networking.k8s.io/v1"
# Ports nginx listens on inside an ingress pod (the LoadBalancer Service's targetPorts). 8080
# and 9053 stay the pod server's, which runs beside nginx as in every lab pod.
HTTPS_PORT = 8443
HTTP_PORT = 8000
# Every answer names the ingress pod that served it, so a client can tell the replicas apart.
POD_HEADER = "X-Ingress-Pod"
STATE_FILE = "ingress.json"  # in the controller's directory: what `down` stops and removes
PATH_TYPES = ("Prefix", "Exact")
START_TIMEOUT = 10.0

# What may reach the nginx config from a manifest: DNS names and plain URL paths, nothing that
# could end a directive (';', '{', quotes, spaces).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")


class IngressError(ValueError):
    """An Ingress object (or a Service it names) the lab's controller cannot serve; the message
    names the object and the field."""


class IngressRunError(RuntimeError):
    """nginx or openssl failed in the lab; the message carries what they said."""


# ------------------------------------------------------------------ the model (pure)

@dataclass(frozen=True)
class Backend:
    """Where a path goes: a Service, by the ClusterIP and port nginx connects to."""

    service: str  # "namespace/name"
    address: str
    port: int


@dataclass(frozen=True)
class PathRule:
    path: str
    path_type: str  # "Prefix" or "Exact"
    backend: Backend


@dataclass
class HostRules:
    """Everything the Ingress objects say about one host."""

    host: str
    tls: bool = False
    paths: List[PathRule] = field(default_factory=list)


def _where(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"Ingress {meta.get('namespace') or 'default'}/{meta.get('name')}"


def _services(docs: Sequence[Any]) -> Dict[Tuple[str, str], Mapping[str, Any]]:
    out = {}
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Service":
            meta = doc.get("metadata") or {}
            out[(meta.get("namespace") or "default", meta.get("name"))] = doc
    return out


def _resolve(services: Mapping[Tuple[str, str], Mapping[str, Any]], namespace: str,
             ref: Any, where: str) -> Backend:
    """backend.service of an Ingress path -> the Service's IPv4 ClusterIP and port."""
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        raise IngressError(f"{where}.backend.service: needs a name (a resource backend is not "
                           "supported)")
    name = ref["name"]
    svc = services.get((namespace, name))
    if svc is None:
        raise IngressError(f"{where}.backend.service.name: Service {namespace}/{name} is not in "
                           "the manifests")
    spec = svc.get("spec") or {}
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    v4 = [ip for ip in ips if isinstance(ip, str) and "." in ip]
    if not v4:
        raise IngressError(f"{where}: Service {namespace}/{name} has no IPv4 ClusterIP (the lab's "
                           "controller proxies to it)")
    port_ref = ref.get("port") or {}
    for port in spec.get("ports") or []:
        if ("number" in port_ref and port.get("port") == port_ref["number"]) or \
                ("name" in port_ref and port.get("name") == port_ref["name"]):
            return Backend(f"{namespace}/{name}", str(ipaddress.IPv4Address(v4[0])),
                           int(port["port"]))
    raise IngressError(f"{where}.backend.service.port: Service {namespace}/{name} has no port "
                       f"{port_ref.get('number', port_ref.get('name'))!r}")


def read_ingresses(docs: Sequence[Any]) -> List[HostRules]:
    """The hosts of every Ingress in `docs` (manifest documents, as documents.load_documents
    gives them), with each path's backend resolved against the Services in `docs`. Rules of one
    host in several Ingresses are merged, as controllers do. Raises IngressError for what the
    lab's controller does not serve: a rule without a host, a defaultBackend, a pathType other
    than Prefix or Exact, a path given twice."""
    services = _services(docs)
    hosts: Dict[str, HostRules] = {}
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Ingress":
            continue
        what = _where(doc)
        if doc.get("apiVersion") != INGRESS_API:
            raise IngressError(f"{what}: apiVersion {doc.get('apiVersion')!r}: use {INGRESS_API}")
        namespace = (doc.get("metadata") or {}).get("namespace") or "default"
        spec = doc.get("spec") or {}
        if spec.get("defaultBackend"):
            raise IngressError(f"{what}: spec.defaultBackend: not supported by the lab's "
                               "controller (give every rule a host)")
        tls_hosts = {h for t in spec.get("tls") or [] for h in t.get("hosts") or []}
        for i, rule in enumerate(spec.get("rules") or []):
            host = rule.get("host")
            if not isinstance(host, str) or not _HOST_RE.match(host):
                raise IngressError(f"{what}: spec.rules[{i}].host: {host!r} is not a DNS name "
                                   "(the lab's controller needs one on every rule)")
            entry = hosts.setdefault(host, HostRules(host))
            entry.tls = entry.tls or host in tls_hosts
            for j, p in enumerate(((rule.get("http") or {}).get("paths")) or []):
                where = f"{what}: spec.rules[{i}].http.paths[{j}]"
                path, path_type = p.get("path", "/"), p.get("pathType")
                if path_type not in PATH_TYPES:
                    raise IngressError(f"{where}.pathType: {path_type!r}: use Prefix or Exact")
                if not isinstance(path, str) or not _PATH_RE.match(path):
                    raise IngressError(f"{where}.path: {path!r} is not a plain absolute path")
                if path_type == "Prefix" and path != "/":
                    path = path.rstrip("/")  # "/cart/" and "/cart" match the same requests
                if any(r.path == path and r.path_type == path_type for r in entry.paths):
                    raise IngressError(f"{where}: {path_type} {path} of {host} is given twice")
                backend = _resolve(services, namespace, (p.get("backend") or {}).get("service"),
                                   where)
                entry.paths.append(PathRule(path, path_type, backend))
    return list(hosts.values())


def _locations(rules: HostRules) -> List[str]:
    """nginx locations for one host's paths. Prefix /p matches /p and /p/... (whole path
    elements, as the Ingress spec says), Exact only itself, and Exact wins over Prefix. The
    matched path is cut off before proxying (what ingress-nginx's rewrite-target annotation is
    for): the lab's pod servers answer / (their name) and /client, not /cart/client."""
    exact = {r.path for r in rules.paths if r.path_type == "Exact"}
    out = []
    for r in rules.paths:
        b = r.backend
        target = f"{{ proxy_pass http://{b.address}:{b.port}/; }}  # {b.service}"
        if r.path_type == "Exact":
            out.append(f"location = {r.path} {target}")
        elif r.path == "/":
            out.append(f"location / {target}")
        else:
            if r.path not in exact:
                out.append(f"location = {r.path} {target}")
            out.append(f"location {r.path}/ {target}")
    if not any(r.path == "/" and r.path_type == "Prefix" for r in rules.paths):
        out.append("location / { return 404; }")
    return out


def render_nginx_conf(hosts: Sequence[HostRules], pod: str, prefix: str,
                      certs: Mapping[str, Tuple[str, str]]) -> str:
    """nginx.conf for ingress pod `pod`: every file under `prefix`; `certs` host -> (certificate,
    key) paths for the TLS hosts. TLS hosts are served on HTTPS_PORT, and redirected there from
    HTTP_PORT; other hosts are served on HTTP_PORT. A name no rule has gets 404 on HTTP_PORT
    and no TLS handshake at all (no certificate to show), as nginx's default servers are set up
    here."""
    def block(header: str, lines: Sequence[str], indent: str = "    ") -> List[str]:
        return [f"{indent}{header} {{", *(f"{indent}    {line}" for line in lines), f"{indent}}}"]

    tls = [h for h in hosts if h.tls]
    plain = [h for h in hosts if not h.tls]
    servers: List[str] = []
    servers += block("server", [f"listen {HTTP_PORT} default_server;", "return 404;"])
    if tls:
        servers += block("server", [f"listen {HTTP_PORT};",
                                    f"server_name {' '.join(h.host for h in tls)};",
                                    "return 308 https://$host$request_uri;"])
    # Unknown server names get no certificate: the handshake ends with an unrecognized_name
    # alert, so a client never sees a certificate that was not made for the name it asked for.
    servers += block("server", [f"listen {HTTPS_PORT} ssl default_server;",
                                "ssl_reject_handshake on;"])
    for h in plain:
        servers += block("server", [f"listen {HTTP_PORT};", f"server_name {h.host};",
                                    *_locations(h)])
    for h in tls:
        cert, key = certs[h.host]
        servers += block("server", [f"listen {HTTPS_PORT} ssl;", f"server_name {h.host};",
                                    f"ssl_certificate {cert};", f"ssl_certificate_key {key};",
                                    *_locations(h)])
    temp = [f"{kind}_temp_path {prefix}/temp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    http = [
        *temp,
        "default_type text/plain;",
        "server_tokens off;",
        "log_format ingress '$remote_addr:$remote_port $ssl_server_name $host \"$request\" "
        "$status upstream=$upstream_addr';",
        f"access_log {prefix}/access.log ingress;",
        f"add_header {POD_HEADER} {pod} always;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        # nginx speaks HTTP/1.0 to upstreams and closes each connection: every request is a
        # new flow to the ClusterIP, balanced on its own, as with an Ingress without upstream
        # keep-alive.
        "proxy_connect_timeout 3s;",
        "proxy_read_timeout 10s;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ]
    lines = [
        f"# nginx.conf of the lab's ingress pod {pod}, written by ebpflb.lab.ingress: every file",
        f"# it uses is under {prefix}.",
        "daemon on;",  # the launcher returns once the sockets listen; the pid file names the master
        "worker_processes 1;",
        f"pid {prefix}/nginx.pid;",
        f"error_log {prefix}/error.log notice;",
        "events { worker_connections 512; }",
        "http {",
        *[f"    {line}" for line in http],
        *servers,
        "}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ certificates

def _openssl(args: Sequence[str], config: str) -> None:
    argv = ["openssl", "req", "-config", config, "-x509", "-new", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise IngressRunError("openssl is not installed: run scripts/setup.sh") from None
    if r.returncode != 0:
        raise IngressRunError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")


def make_certificates(directory: str,
                      hosts: Sequence[str]) -> Tuple[str, Dict[str, Tuple[str, str]]]:
    """A throwaway CA and one server certificate per host (its name as the only SAN), signed by
    it, in `directory`: (CA certificate path, host -> (certificate, key) paths). Keys are 0600.
    An empty openssl config keeps the machine's /etc/ssl/openssl.cnf defaults out of them."""
    config = os.path.join(directory, "openssl.cnf")
    with open(config, "w") as fh:
        fh.write("[req]\ndistinguished_name = dn\n[dn]\n")
    ca, ca_key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    _openssl(["-keyout", ca_key, "-out", ca, "-subj", "/CN=ebpflb lab ingress CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], config)
    certs = {}
    for host in hosts:
        cert, key = os.path.join(directory, f"{host}.pem"), os.path.join(directory, f"{host}.key")
        _openssl(["-keyout", key, "-out", cert, "-subj", f"/CN={host}", "-CA", ca, "-CAkey", ca_key,
                  "-addext", f"subjectAltName=DNS:{host}",
                  "-addext", "basicConstraints=critical,CA:FALSE",
                  "-addext", "keyUsage=critical,digitalSignature",
                  "-addext", "extendedKeyUsage=serverAuth"], config)
        certs[host] = (cert, key)
    return ca, certs


# ------------------------------------------------------------------ nginx in lab pods

def nginx_binary() -> str:
    # /usr/sbin may be missing from a non-login PATH.
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if path is None:
        raise IngressRunError("nginx is not installed: run scripts/setup.sh (Debian package "
                              "nginx-light)")
    return path


def _children(pid: int) -> List[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone while we looked
        # The parent pid is the second field after the parenthesised command name.
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry))
    return out


def _nginx_pids(master: Optional[int], prefix: str) -> List[int]:
    """One pod's nginx: its master, if the pid file still names it (its command line holds our
    prefix: not a reused pid, nor another controller's nginx in the same pod), then its workers,
    taken now so that none is left behind if the master has to be killed."""
    from .nsops import pid_alive

    if not master or not pid_alive(master):
        return []
    try:
        with open(f"/proc/{master}/cmdline", "rb") as fh:
            # nginx rewrites its title ("nginx: master process <argv joined by spaces>").
            if f" -p {prefix}/ ".encode() not in fh.read().replace(b"\0", b" "):
                return []
    except OSError:
        return []
    return [master] + _children(master)


@dataclass
class _PodRun:
    pod: str
    netns: str
    prefix: str

    @property
    def pid_file(self) -> str:
        return os.path.join(self.prefix, "nginx.pid")

    def master_pid(self) -> Optional[int]:
        try:
            with open(self.pid_file) as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None


class IngressController:
    """nginx in each of `pods` of lab `lab_name`, serving what the Ingress objects in `docs`
    say. start() returns once every nginx listens; stop() is safe at any point and more than
    once. Use as a context manager, or call stop() in a finally."""

    def __init__(self, lab_name: str, pods: Sequence[str], docs: Sequence[Any],
                 parent_dir: Optional[str] = None) -> None:
        self.lab_name = lab_name
        self.pods = list(pods)
        self.hosts = read_ingresses(docs)
        if not self.hosts:
            raise IngressError("no Ingress with rules in the manifests")
        self.parent_dir = parent_dir
        self.workdir: Optional[str] = None
        self.ca_path = ""
        self.runs: List[_PodRun] = []

    def __enter__(self) -> "IngressController":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "IngressController":
        from .lab import get_lab

        try:
            lab = get_lab(self.lab_name)
            missing = [p for p in self.pods if p not in lab.pods]
            if missing:
                raise IngressRunError(f"lab {self.lab_name}: no pod {', '.join(missing)}")
            binary = nginx_binary()
            self.workdir = tempfile.mkdtemp(prefix="ebpflb-ingress-", dir=self.parent_dir)
            # nginx's workers run as nobody: they must get through to their temp directories.
            os.chmod(self.workdir, 0o711)
            self.ca_path, certs = make_certificates(self.workdir,
                                                    [h.host for h in self.hosts if h.tls])
            for pod in self.pods:
                run = _PodRun(pod, lab.pod_ns(pod), os.path.join(self.workdir, pod))
                os.makedirs(os.path.join(run.prefix, "temp"))
                os.chmod(run.prefix, 0o711)
                self.runs.append(run)
                self._save_state()  # before nginx starts, so `down` finds it after any crash
                self._start_one(binary, run, lab.cgroup(lab.pods[pod].node), certs)
            log.info("lab %s: ingress nginx serving %s in pods %s", self.lab_name,
                     ", ".join(h.host for h in self.hosts), ", ".join(self.pods))
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, binary: str, run: _PodRun, cgroup: Optional[str],
                   certs: Mapping[str, Tuple[str, str]]) -> None:
        from .nsops import in_cgroup, netns_path

        conf = os.path.join(run.prefix, "nginx.conf")
        error_log = os.path.join(run.prefix, "error.log")
        with open(conf, "w") as fh:
            fh.write(render_nginx_conf(self.hosts, run.pod, run.prefix, certs))
        # -e: the error log before the config is read, which would otherwise be
        # /var/log/nginx/error.log. nsenter, not `ip netns exec`: no mount namespace of its own.
        argv = in_cgroup(cgroup, ["nsenter", f"--net={netns_path(run.netns)}", binary,
                                  "-p", run.prefix + "/", "-c", conf,
                                  "-e", error_log])
        launch_log = os.path.join(run.prefix, "launch.log")
        with open(launch_log, "w") as out:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, timeout=START_TIMEOUT, cwd="/")
        if r.returncode != 0:
            raise IngressRunError(f"lab {self.lab_name}: pod {run.pod}: nginx exited "
                                  f"{r.returncode}: {_tail(launch_log)}{_tail(error_log)}")
        # With `daemon on` nginx has bound its sockets before the launcher exits; the master
        # writes its pid file just after.
        deadline = time.monotonic() + START_TIMEOUT
        while run.master_pid() is None:
            if time.monotonic() > deadline:
                raise IngressRunError(f"lab {self.lab_name}: pod {run.pod}: nginx wrote no pid "
                                      f"file: {_tail(error_log)}")
            time.sleep(0.02)
        log.debug("lab %s: pod %s: nginx master %s", self.lab_name, run.pod, run.master_pid())

    def _save_state(self) -> None:
        assert self.workdir is not None
        state = {"lab": self.lab_name, "ca": self.ca_path,
                 "pods": [{"pod": r.pod, "netns": r.netns, "prefix": r.prefix} for r in self.runs]}
        with open(os.path.join(self.workdir, STATE_FILE), "w") as fh:
            json.dump(state, fh, indent=1)

    def logs(self, lines: int = 20) -> str:
        """The tail of every pod's nginx error and access logs, for a failed assertion."""
        out = []
        for run in self.runs:
            for name in ("error.log", "access.log"):
                out.append(f"--- {run.pod} {name}:\n{_tail(os.path.join(run.prefix, name), lines)}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every nginx this controller started and remove its directory."""
        stop_runs(self.runs)
        self.runs = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def stop_runs(runs: Sequence[_PodRun]) -> List[int]:
    """SIGTERM to each pod's nginx (then SIGKILL, see nsops.kill_pids); returns the pids."""
    from .nsops import kill_pids

    stopped = []
    for run in runs:
        pids = _nginx_pids(run.master_pid(), run.prefix)
        if pids:
            stopped += kill_pids(pids)
            log.debug("pod %s: nginx stopped (%s)", run.pod, pids)
    return stopped


def down(workdir: str) -> List[int]:
    """Stop what `up` started in `workdir` and remove it. Refuses a directory without the
    controller's state file, so a wrong argument cannot remove anything else."""
    state_path = os.path.join(workdir, STATE_FILE)
    try:
        with open(state_path) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        if not os.path.exists(workdir):
            return []
        raise IngressRunError(f"{workdir}: no {STATE_FILE}: not an ingress controller's directory")
    runs = [_PodRun(p["pod"], p["netns"], p["prefix"]) for p in state.get("pods", [])]
    stopped = stop_runs(runs)
    shutil.rmtree(workdir)
    return stopped


# ------------------------------------------------------------------ command line (for scripts)

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ebpflb.lab.ingress",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="start nginx in lab pods; prints the directory that holds "
                                     "ca.pem, which `down` takes")
    up_p.add_argument("--lab", required=True)
    up_p.add_argument("--manifests", required=True, action="append",
                      help="a manifest file with Ingress objects and their Services (repeatable)")
    up_p.add_argument("--pod", required=True, action="append", help="an ingress pod (repeatable)")
    up_p.add_argument("--tmp-dir", default=None, help="where its directory is made")
    down_p = sub.add_parser("down", help="stop what `up` started and remove its directory")
    down_p.add_argument("workdir")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..documents import TextError, load_documents
    from .nsops import LabError

    try:
        if args.command == "down":
            down(args.workdir)
            return 0
        docs: List[Any] = []
        for path in args.manifests:
            with open(path) as fh:
                docs += load_documents(fh.read())
        controller = IngressController(args.lab, args.pod, docs, args.tmp_dir).start()
        print(controller.workdir)
        return 0
    except (IngressError, IngressRunError, LabError, TextError, OSError) as exc:
        print(f"ebpflb.lab.ingress: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
