"""What seals the embedded SeaweedFS to everything but its S3 port, made once per home.

SeaweedFS reads `security.toml` from its working folder. Ours holds:

- JWT signing keys for volume writes and reads and for filer writes and reads: the volume and
  filer HTTP ports answer 401 to any request without a token signed with these keys, and only
  the S3 gateway (inside the same `weed` process) gets such tokens;
- mutual TLS for every gRPC port, with a CA and a node certificate made here: a client without
  the node's key (e.g. `weed shell` run by another user) cannot list, read or delete entries.

The master's HTTP port still answers topology and volume-assignment queries (no object names
or content: reads and writes need the tokens above); the Iceberg and Lance ports are not
opened. Everything lives under `<home>/seaweedfs` (0700), written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

GRPC_PARTS = ("volume", "master", "filer", "s3", "admin", "worker", "client")


def write_security(state: Path, write_private) -> Path:
    """`state/security.toml` (and its certificates), made on first use; returns its path."""
    path = state / "security.toml"
    if path.exists() and (state / "node.key").exists():
        return path
    ca_pem, cert_pem, key_pem = _certificates()
    write_private(state / "ca.crt", ca_pem)
    write_private(state / "node.crt", cert_pem)
    write_private(state / "node.key", key_pem)
    lines = []
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        lines += [f"[{section}]", f'key = "{secrets.token_hex(32)}"', "expires_after_seconds = 30", ""]
    lines += ["[access]", "ui = false", "", "[grpc]", f'ca = "{state / "ca.crt"}"', ""]
    for part in GRPC_PARTS:
        lines += [f"[grpc.{part}]", f'cert = "{state / "node.crt"}"', f'key = "{state / "node.key"}"', ""]
    write_private(path, "\n".join(lines))
    return path


def _certificates() -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def certificate(subject: str, key, issuer: x509.Name, signer, extensions) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=3650)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("ldm-batch seaweedfs CA", ca_key, name("ldm-batch seaweedfs CA"), ca_key,
                     [(x509.BasicConstraints(ca=True, path_length=0), True)])
    node = certificate("ldm-batch seaweedfs", node_key, ca.subject, ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem).decode(), node.public_bytes(pem).decode(),
            node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
