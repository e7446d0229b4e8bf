"""One canonical form of a run location: what the store boundary, the run lock and the scratch
name compare, so that spellings of one place (`STORE//run`, `STORE/./run`, `STORE/x/../run`)
are one place, and no spelling leaves the operator's store.

- a folder: its resolved absolute path (`..`, `.`, symlinks and `~` resolved);
- `file://` (and `local://`): `file://` + the resolved absolute path (no host);
- any other URL: `scheme://bucket/seg/seg` — scheme lower-cased, empty and `.` segments dropped,
  `..` refused (on an object store it is a literal key that reads as a way out), no query or
  fragment, a bucket that is a name.

Run directories live only on stores that keep and list their files (PERSISTENT_SCHEMES):
`memory://` ran a paid run that left nothing behind, `http://` cannot be listed.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .errors import InputError

LOCAL_SCHEMES = frozenset({"file", "local"})
PERSISTENT_SCHEMES = LOCAL_SCHEMES | frozenset({
    "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "webhdfs", "sftp", "ssh", "ftp", "oci",
})
FIELD = "--workdir"


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def canonical_location(location: str | Path, field: str = FIELD) -> str:
    """The one spelling of `location` (see the module's note); InputError (naming `field`) when it has none."""
    try:
        return _canonical(location)
    except InputError as exc:
        if field == FIELD:
            raise
        raise InputError(exc.message, field=field) from None


def _canonical(location: str | Path) -> str:
    text = str(location).strip()
    if not is_url(text):
        return str(Path(text).expanduser().resolve())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in PERSISTENT_SCHEMES:
        raise InputError(f"{scheme}:// cannot hold a run directory: it must keep and list its files (a folder, "
                         f"file://, {', '.join(s + '://' for s in sorted(PERSISTENT_SCHEMES - LOCAL_SCHEMES))})",
                         field=FIELD)
    if parts.query or parts.fragment:
        raise InputError("a run directory URL takes no query (?…) or fragment (#…)", field=FIELD)
    if scheme in LOCAL_SCHEMES:
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{scheme}:// names a folder on this machine, not on {parts.netloc!r}", field=FIELD)
        return "file://" + str(Path(parts.path or "/").expanduser().resolve())
    host = parts.netloc.rsplit("@", 1)[-1]
    if not host or host in (".", ".."):
        raise InputError(f"{scheme}:// needs a bucket: {scheme}://BUCKET/prefix", field=FIELD)
    segments = [s for s in parts.path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InputError("'..' in a run directory URL: name the directory itself", field=FIELD)
    return f"{scheme}://{parts.netloc}" + "".join("/" + s for s in segments)


def _place(location: str) -> tuple[str, str, tuple[str, ...]]:
    """(kind, bucket, path segments) of a canonical location: a folder and its file:// URL are one place;
    credentials are not part of a place."""
    if not is_url(location) or location.startswith("file://"):
        path = location.removeprefix("file://")
        return "file", "", tuple(p for p in path.split("/") if p)
    parts = urlsplit(location)
    scheme = {"s3a": "s3", "gcs": "gs"}.get(parts.scheme, parts.scheme)
    return scheme, parts.netloc.rsplit("@", 1)[-1], tuple(p for p in parts.path.split("/") if p)


def place_key(location: str | Path) -> str:
    """A name for the place (no credentials): what the lock and the scratch copy are named by."""
    kind, bucket, segments = _place(canonical_location(location))
    return f"{kind}://{bucket}/" + "/".join(segments)


def is_within(location: str | Path, base: str | Path) -> bool:
    """`location` is `base` or below it, both canonical: the same store and bucket, and `base`'s
    path segments a prefix of `location`'s (so `STORE/../outside` and `STORE-evil` are not)."""
    kind, bucket, segments = _place(canonical_location(location))
    base_kind, base_bucket, base_segments = _place(canonical_location(base))
    return (kind, bucket) == (base_kind, base_bucket) and segments[:len(base_segments)] == base_segments
