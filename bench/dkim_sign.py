"""DKIM signing cost per message on one core: delivery.dkim's signer against dkimpy's own `dkim.sign`.

    .venv/bin/python bench/dkim_sign.py [--messages 5000]

bench/render.py's marketing email (its HTML twice, about 4 KB on the wire) for each recipient, put into wire bytes
by delivery.mime.email_message (the headers message_bytes sends, built by Django's MIME: no database needed), then
signed with an RSA 2048 key, relaxed/relaxed, the headers delivery.dkim signs. Prints CPU time per message for the
signer (our canonicalisation, RSA by OpenSSL through `cryptography`), the bare RSA signature it contains, and
dkimpy's `dkim.sign` (its pure-Python RSA) on the same bytes. Every 500th signed message is verified with dkimpy's
verifier after the clock stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _render_bench():  # bench/ is not a package: bench/render.py's email and contacts, loaded from its file
    spec = importlib.util.spec_from_file_location("bench_render", ROOT / "bench" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_ms(function, items: list) -> float:
    started = time.process_time()
    for item in items:
        function(item)
    return (time.process_time() - started) * 1000 / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import hashlib

    import dkim
    from cryptography.hazmat.primitives.asymmetric import padding, utils
    from cryptography.hazmat.primitives.hashes import SHA256

    from delivery import dkim as delivery_dkim
    from delivery import mime
    from delivery.backends import Outgoing

    bench = _render_bench()
    # bench/render.py's template with its tags filled in by hand: the signing cost depends on the bytes, not on how
    # they were rendered (and this bench does not move when the template engine does).
    html = re.sub(r"{%.*?%}", "", re.sub(r"{{.*?}}", "Zoë", bench.HTML, flags=re.S), flags=re.S) * 2
    text = re.sub(r"{%.*?%}", "", re.sub(r"{{.*?}}", "Zoë", bench.TEXT, flags=re.S), flags=re.S)
    organisation_id = str(uuid.uuid4())
    wire = []
    for index in range(args.messages):
        token = uuid.uuid4().hex
        payload = {
            "subject": f"Zoë {index}, our spring sale",
            "html": html,
            "text": text,
            "from": '"Demo Retail" <news@demo.example>',
            "from_email": "news@demo.example",
            "reply_to": "help@demo.example",
            "headers": {
                "List-Unsubscribe": f"<https://cs.demo.example/u/{token}>, <mailto:u+{token}@cs.demo.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "Message-ID": f"<{token}@cs.demo.example>",
                "List-Id": "Spring sale <spring.demo.example>",
                "Feedback-ID": f"spring:{organisation_id}:marketing",
            },
        }
        outgoing = Outgoing(
            *(index, f"k-{index}", "email", "run", "campaign", organisation_id, "variant", "A", index),
            address=f"c{index}@inbox.example",
            payload=payload,
        )
        wire.append(mime.email_message(outgoing).message().as_bytes(linesep="\r\n"))
    keys = delivery_dkim.key_pair_generate()
    signer = delivery_dkim.DomainSigner(domain="demo.example", selector="cs202612", private_pem=keys.private_pem)
    record = delivery_dkim.dns_record_value(keys.public_key).encode()

    ours = _cpu_ms(signer, wire)
    digest = hashlib.sha256(b"x").digest()
    rsa_only = _cpu_ms(lambda _: signer.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(SHA256())), wire)
    headers = [name.decode() for name in delivery_dkim.SIGNED_HEADERS + delivery_dkim.OVER_SIGNED_HEADERS]
    sample = wire[: max(1, min(200, len(wire)))]
    dkimpy = _cpu_ms(
        lambda data: dkim.sign(
            data,
            b"cs202612",
            b"demo.example",
            keys.private_pem.encode(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
        ),
        sample,
    )
    for data in wire[::500]:
        if not dkim.verify(signer(data), dnsfunc=lambda name, timeout=5: record):
            raise SystemExit("a signed message did not verify")
    size = sum(map(len, wire)) / len(wire)
    print(f"{len(wire):,} messages of {size:,.0f} bytes on average, CPU ms per message:")
    print(f"  delivery.dkim signer (OpenSSL RSA): {ours:.3f}")
    print(f"    of which the RSA 2048 signature:  {rsa_only:.3f}")
    print(f"  dkimpy dkim.sign (pure Python RSA): {dkimpy:.3f}  ({len(sample)} messages)")


if __name__ == "__main__":
    main()
