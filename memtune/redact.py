"""Credentials stay out of specs and messages: what looks like one, and `redact` for any text shown to a person.

A spec may name a Secret (`valueFrom.secretKeyRef`, `storage.secretRef`) but never hold a credential: a spec is
copied into ConfigMaps, pod environments, annotations, job.yaml and logs. `spec.py` refuses the shapes below, the
CRD refuses the same with CEL (`memtune/crd.py`), and every message a CLI prints, a trainer writes to its
termination log or the operator puts in status passes through `redact` as well.
No torch, no Kubernetes: the CLI, the trainer and the operator share it.
"""

from __future__ import annotations

import os
import re

# Environment variable names that hold credentials (AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID, HF_TOKEN,
# WANDB_API_KEY, DB_PASSWORD, ...), matched on whole `_`/`-`/`.`-separated words so TOKENIZERS_PARALLELISM is not.
# RE2-compatible: the CRD's CEL rules use the same pattern.
CREDENTIAL_NAME = (
    r"(?i)(^|[_.-])(SECRETS?|PASSWORD|PASSWD|TOKEN|APIKEY|CREDENTIALS?|SESSION[_.-]?TOKEN"
    r"|(API|ACCESS|PRIVATE|SIGNING|ENCRYPTION)[_.-]?KEY)([_.-]|$)"
)
# scheme://user[:password]@host: credentials inside a URI. A password may hold "/" (AWS secret keys do), so
# "name:" followed by anything but a port number, then "@", counts too. RE2-compatible (no lookahead): CEL uses it.
_USERINFO_BODY = r"([^/?#@ ]*@|[^/?#@: ]*:([^0-9/?#@ ]|[0-9]+[^0-9/?#@ ])[^@ ]*@)"
_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
URI_USERINFO = f"^{_SCHEME}{_USERINFO_BODY}"
# Anywhere in a value: a URI with userinfo, an AWS access key id, a PEM private key (RE2-compatible, for CEL too).
CREDENTIAL_VALUE = f"{_SCHEME}{_USERINFO_BODY}|(AKIA|ASIA)[0-9A-Z]{{16}}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
_CREDENTIAL_VALUE = re.compile(CREDENTIAL_VALUE)
_USERINFO = re.compile(f"({_SCHEME}){_USERINFO_BODY}".replace(" ", "\\s"))
_KEYS = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")
# Variables of this process whose values are never shown (the trainer's storage Secret lands here).
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
HIDDEN = "***"


def is_credential_name(name: str) -> bool:
    return re.search(CREDENTIAL_NAME, name) is not None


def has_userinfo(uri: str) -> bool:
    """True for `https://user:pw@host/...`, `s3://KEY:pw@bucket/...` (credentials inside a URI)."""
    return re.match(URI_USERINFO, uri) is not None


def credential_in_value(value: str) -> str | None:
    """What kind of credential a literal value holds (for the error message, never the value), or None."""
    if not (found := _CREDENTIAL_VALUE.search(value)):
        return None
    if "://" in found.group():
        return "a URI with user:password@"
    return "a private key" if found.group().startswith("-----") else "an AWS access key id"


def redact(text: str) -> str:
    """`text` with URI userinfo, access key ids, private keys and this process's secret variables hidden."""
    text = _USERINFO.sub(rf"\1{HIDDEN}@", text)
    text = _KEYS.sub(HIDDEN, text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:  # a one-letter test value would blank out ordinary words
            text = text.replace(value, HIDDEN)
    return text
