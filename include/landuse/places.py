"""Where a run may read and write: locations named by a run's parameters, checked.

A DAG run's parameters come from whoever may trigger it. A storage root, registry, image,
model, output folder or Spark master named there must be one the deployment allows, so a
run can neither read nor write outside the configured roots, nor hand the storage
credentials of its workers to a Spark master somewhere else.

Allowed locations:

* folders (and ``file://`` URLs) under the default storage root, the project's ``output/``
  and ``sample/`` folders, and the entries of ``LANDUSE_ALLOWED_ROOTS``;
* blob URLs (``abfs://``, ``abfss://``, ``az://``) under the default storage root when it
  is one, and under the blob entries of ``LANDUSE_ALLOWED_ROOTS``; an entry of a bare
  scheme (``abfs://``) allows every container of the account the credentials open.

``LANDUSE_ALLOWED_ROOTS`` is comma-separated. Spark masters: ``local``/``local[N]`` always;
``spark://`` masters on loopback, and those listed in ``LANDUSE_ALLOWED_SPARK_MASTERS``
(comma-separated ``spark://host:port``).
"""

from __future__ import annotations

import os
import re

from landuse import config

BLOB_SCHEMES = ("abfs", "abfss", "az")
_LOCAL_MASTER = re.compile(r"^local(\[(\d+|\*)(,\d+)?\])?$")
_LOOPBACK_MASTER = re.compile(r"^spark://(127\.0\.0\.1|localhost|\[::1\]):\d{1,5}$")


def allowed_roots() -> list[str]:
    """The roots every location must lie under (see the module docstring)."""
    roots = [config.storage_root(), str(config.PROJECT_ROOT / "output"), str(config.SAMPLE)]
    extra = os.environ.get("LANDUSE_ALLOWED_ROOTS", "")
    roots += [r.strip() for r in extra.split(",") if r.strip()]
    return roots


def check_location(url: str, what: str, roots: list[str] | None = None) -> str:
    """Return ``url`` when it lies under an allowed root.

    Args:
        url: a folder, ``file://`` or blob URL.
        what: what the location is for, named in the error (e.g. "storage_root").
        roots: allowed roots; default :func:`allowed_roots`.

    Raises:
        ValueError: another scheme, a '..' segment in a blob URL, or a location outside
            every allowed root; the message names the parameter, the location and the roots.
    """
    roots = allowed_roots() if roots is None else roots
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "file":
        path = os.path.realpath(rest if sep else url)  # resolves '..' and symbolic links
        local = [os.path.realpath(r.removeprefix("file://")) for r in roots
                 if "://" not in r or r.startswith("file://")]
        if any(path == r or path.startswith(r.rstrip("/") + "/") for r in local):
            return url
    elif scheme in BLOB_SCHEMES:
        if ".." in rest.split("/"):
            raise ValueError(f"{what} {url!r} has a '..' segment: name the location directly")
        family = [r for r in roots if r.partition("://")[0] in BLOB_SCHEMES]
        for root in family:
            prefix = root.partition("://")[2].rstrip("/")
            if not prefix or rest == prefix or rest.startswith(prefix + "/"):
                return url
    else:
        raise ValueError(f"{what} {url!r}: the {scheme}:// scheme is not allowed; use a "
                         f"folder or an {'/'.join(s + '://' for s in BLOB_SCHEMES)} URL")
    raise ValueError(f"{what} {url!r} is outside the allowed roots {roots}; set "
                     "LANDUSE_ALLOWED_ROOTS (comma-separated) in the deployment to allow it")


def check_spark_master(master: str, what: str = "spark_master") -> str:
    """Return ``master`` when it is local, on loopback, or listed as allowed.

    Raises:
        ValueError: any other master, named with the way to allow it.
    """
    allowed = [m.strip().rstrip("/") for m in
               os.environ.get("LANDUSE_ALLOWED_SPARK_MASTERS", "").split(",") if m.strip()]
    if (_LOCAL_MASTER.fullmatch(master) or _LOOPBACK_MASTER.fullmatch(master)
            or master.rstrip("/") in allowed):
        return master
    raise ValueError(f"{what} {master!r} is not allowed: use local[N], a spark:// master on "
                     "127.0.0.1, or one listed in LANDUSE_ALLOWED_SPARK_MASTERS")
