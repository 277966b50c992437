"""A real OpenLDAP ``slapd`` on a free port, with a generated configuration.

Debian's ``slapd`` package (``make test`` installs it when missing). Each
server lives in a folder of its own: ``slapd.conf`` (mdb backend; the core,
cosine, nis and inetorgperson schemas; the ppolicy overlay, whose
``pwdAccountLockedTime`` locks an account; refint, which rewrites member
DNs when an entry is renamed; a small schema of Active Directory's
attributes), the database, and the seed entries loaded offline with
``slapadd`` before the server starts. Accounts: the root DN (no limits),
``cn=reader`` (a sync account with unlimited paged searches) and
``cn=capped`` (paged searches stop after a few entries, as a server's size
limit would). Shared by tests/system/test_ldap.py and benchmarks/bench_ldap.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .milvus_server import free_port

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "admin-secret"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-secret"
CAPPED_DN = f"cn=capped,{SUFFIX}"
CAPPED_PW = "capped-secret"
CAPPED_TOTAL = 4  # entries a paged search of cn=capped returns before the server stops it
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")

# Active Directory's own OIDs for the attributes permrag reads from AD, so an
# OpenLDAP server can hold entries shaped like AD's (objectClass group, objectGUID bytes).
AD_SCHEMA = """\
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.2 NAME 'objectGUID'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.2.102 NAME 'memberOf'
  EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
objectclass ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'adAccount' AUXILIARY
  MAY ( sAMAccountName $ userAccountControl $ objectGUID $ memberOf ) )
objectclass ( 1.2.840.113556.1.5.8 NAME 'group' SUP top STRUCTURAL
  MUST cn MAY ( member $ sAMAccountName $ objectGUID $ description ) )
"""

BASE_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {READER_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: {READER_PW}

dn: {CAPPED_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: capped
userPassword: {CAPPED_PW}
"""


def find_slapd() -> str | None:
    return shutil.which("slapd") or next((p for p in ("/usr/sbin/slapd",) if os.access(p, os.X_OK)), None)


def _conf(root: Path, tls: tuple[Path, Path, Path] | None) -> str:
    schema_dir = Path("/etc/ldap/schema")
    lines = [f"include {schema_dir / (s + '.schema')}" for s in SCHEMAS] + [f"include {root / 'ad.schema'}"]
    lines += [
        "modulepath /usr/lib/ldap",
        "moduleload back_mdb",
        "moduleload ppolicy",
        "moduleload refint",
        f"pidfile {root / 'slapd.pid'}",
        f"argsfile {root / 'slapd.args'}",
        "sizelimit 500",
    ]
    if tls is not None:
        ca, cert, key = tls
        lines += [f"TLSCACertificateFile {ca}", f"TLSCertificateFile {cert}", f"TLSCertificateKeyFile {key}"]
    lines += [
        "database mdb",
        "maxsize 4294967296",
        f'suffix "{SUFFIX}"',
        f'rootdn "{ROOT_DN}"',
        f"rootpw {ROOT_PW}",
        f"directory {root / 'db'}",
        "index objectClass eq",
        "index entryUUID eq",
        f'limits dn.exact="{READER_DN}" size=unlimited size.prtotal=unlimited time=unlimited',
        f'limits dn.exact="{CAPPED_DN}" size.soft={CAPPED_TOTAL} size.hard={CAPPED_TOTAL} size.prtotal={CAPPED_TOTAL}',
        "overlay ppolicy",
        "overlay refint",
        "refint_attributes member uniqueMember memberOf",
        "access to attrs=userPassword by self write by anonymous auth by * none",
        "access to * by * read",
    ]
    return "\n".join(lines) + "\n"


def make_tls(folder: Path, host: str = "localhost", ip: str | None = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for ``host`` and ``ip``: (CA, certificate, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "permrag test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names = x509.SubjectAlternativeName([x509.DNSName(host)] + ([x509.IPAddress(ipaddress.ip_address(ip))] if ip else []))
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1)).add_extension(names, critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class Slapd:
    """One slapd: its folder, port and process (see the module docstring)."""

    def __init__(self, root: Path, seed_ldif: str = "", *, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.root = Path(root)
        self.seed = BASE_LDIF + ("\n" + seed_ldif if seed_ldif else "")
        self.tls = tls
        self.port = 0
        self.tls_port = 0  # an ldaps:// listener too, when the server has a certificate
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def load(self, ldif_path: Path | None = None) -> float:
        """Write the configuration and load the seed (or ``ldif_path``) offline; seconds taken."""
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        (self.root / "ad.schema").write_text(AD_SCHEMA)
        (self.root / "slapd.conf").write_text(_conf(self.root, self.tls))
        seed = self.root / "seed.ldif"
        seed.write_text(self.seed)
        t0 = time.perf_counter()
        for path in [seed] + ([ldif_path] if ldif_path else []):
            out = subprocess.run([str(Path(find_slapd() or "/usr/sbin/slapd").with_name("slapadd")), "-q", "-f", str(self.root / "slapd.conf"), "-l", str(path)], capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"slapadd failed ({out.returncode}): {out.stderr[-2000:]}")
        return time.perf_counter() - t0

    def start(self, port: int | None = None) -> Slapd:
        binary = find_slapd()
        if binary is None:
            raise RuntimeError("slapd is not installed (Debian package slapd)")
        if not (self.root / "slapd.conf").exists():
            self.load()
        self.port = port or self.port or free_port()
        listen = f"ldap://127.0.0.1:{self.port}/"
        if self.tls is not None:
            self.tls_port = self.tls_port or free_port()
            listen += f" ldaps://127.0.0.1:{self.tls_port}/"
        log = open(self.root / "slapd.log", "ab")
        self.proc = subprocess.Popen([binary, "-d", "0", "-f", str(self.root / "slapd.conf"), "-h", listen], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited ({self.proc.returncode}): {(self.root / 'slapd.log').read_text()[-2000:]}")
            try:
                for p in (self.port, self.tls_port) if self.tls_port else (self.port,):
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"slapd did not listen on port {self.port} within 20 s")

    def kill(self) -> None:
        """SIGKILL: the connection drops mid-operation, as a crash or a network cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def modify(self, ldif: str, timeout: float = 30) -> None:
        """Apply an LDIF change record as the root DN (``ldapmodify``, a client of its own)."""
        out = subprocess.run(["ldapmodify", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW], input=ldif, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"ldapmodify failed ({out.returncode}): {out.stderr.strip()}")

    def search(self, base: str, filt: str, *attrs: str) -> list[dict[str, list[str]]]:
        """Entries as ``ldapsearch`` (OpenLDAP's own client) returns them: attribute (lower case) → values, and ``dn``."""
        out = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW, "-b", base, filt, *attrs],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode:
            raise RuntimeError(f"ldapsearch failed ({out.returncode}): {out.stderr.strip()}")
        entries: list[dict[str, list[str]]] = []
        for block in out.stdout.strip().split("\n\n"):
            entry: dict[str, list[str]] = {}
            for line in block.splitlines():
                key, _, value = line.partition(": ")
                entry.setdefault(key.lower(), []).append(value)
            if entry:
                entries.append(entry)
        return entries
