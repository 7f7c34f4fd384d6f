"""NAIP through a STAC API: a small STAC API on loopback serving the bundled real scenes.

The server implements what pystac-client needs of STAC API item search (landing page,
conformance, collections, ``/search`` by GET and POST with paging) and serves the scene
files over HTTP with range requests, so GDAL's ``/vsicurl/`` reads them as it would the
Planetary Computer's. It can demand a signature (``sig=``) on asset reads, as the Planetary
Computer's storage does. Nothing leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from urllib.request import urlopen

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping, shape

from landuse import stac, storage
from landuse.counties import County
from landuse.naip import NaipCatalog
from landuse.naip_scene import parse_scene_name
from landuse.raster import RasterError, open_raster, read_checked
from landuse.tiling import TilingConfig, build_county

SAMPLE_NAIP = Path(__file__).resolve().parents[2] / "sample" / "naip"
INSIDE = (-99.17, 47.01, -99.15, 47.03)  # inside quarter quad 4709963 se
ELSEWHERE = (-99.0, 47.0, -98.9, 47.1)  # the next quarter quad to the east
PAGE = 2  # smaller than the item count, so that pystac-client must follow "next" links


class StacApi:
    """A STAC API on 127.0.0.1 with one ``naip`` collection built from real scenes."""

    def __init__(self, scenes: list[Path], signature: str | None = None,
                 fail_search_with: int | None = None, drop_asset: str | None = None) -> None:
        self.files = {p.name: p for p in scenes}
        self.signature = signature  # asset reads need ?...&sig=<this> when set
        self.fail_search_with = fail_search_with  # answer /search with this HTTP status
        self.log: list[tuple[str, str, dict[str, Any]]] = []  # in the serving process
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.items = [self._item(p) for p in scenes]
        for item in self.items:
            item["assets"].pop(drop_asset, None)
        # Served from another process: GDAL holds the GIL while it waits for an answer, so a
        # server thread in this process could never send it.
        self.process = multiprocessing.get_context("fork").Process(
            target=self._serve, daemon=True)
        self.process.start()

    def _serve(self) -> None:
        # A fork keeps the parent's Python signal handlers; one for SIGTERM (tests of Airflow
        # tasks install them) would let this process outlive terminate(), and then
        # multiprocessing's exit handler waits for it forever: pytest never exits.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.server.serve_forever()

    @property
    def requests(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The requests the server has answered so far (method, path, parameters)."""
        with urlopen(f"{self.url}/_log", timeout=10) as answer:
            return [tuple(r) for r in json.load(answer)]  # type: ignore[misc]

    @property
    def location(self) -> str:
        return f"stac+{self.url}/collections/naip"

    def href(self, name: str) -> str:
        scene = parse_scene_name(name)
        return (f"{self.url}/naip/v002/nd/{scene.year}/nd_100cm_{scene.year}/"
                f"{scene.quad[:5]}/{name}")

    def _item(self, path: Path) -> dict[str, Any]:
        scene = parse_scene_name(path.name)
        try:
            with rasterio.open(path) as src:
                bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        except RasterioIOError:  # a deliberately corrupt scene: its nominal footprint
            bounds = scene.footprint
        item = pystac.Item(
            id=f"nd_{path.stem}",
            geometry=mapping(box(*bounds)),
            bbox=list(bounds),
            datetime=dt.datetime.combine(scene.date, dt.time(), tzinfo=dt.UTC),
            properties={"naip:state": "nd", "naip:year": str(scene.year), "gsd": 5.0},
            collection="naip",
        )
        # As on the Planetary Computer: a rendered preview first, the GeoTIFF as "image".
        item.add_asset("rendered_preview", pystac.Asset(
            href=f"{self.url}/preview/{path.stem}.png", media_type=pystac.MediaType.PNG))
        item.add_asset("image", pystac.Asset(
            href=self.href(path.name), media_type=pystac.MediaType.COG, roles=["data"]))
        return item.to_dict(include_self_link=False)

    def _page(self, params: dict[str, Any], method: str) -> dict[str, Any]:
        collections = params.get("collections") or []
        if isinstance(collections, str):
            collections = collections.split(",")
        found = [i for i in self.items if not collections or i["collection"] in collections]
        if params.get("intersects"):
            geometry = params["intersects"]
            area = shape(json.loads(geometry) if isinstance(geometry, str) else geometry)
            found = [i for i in found if area.intersects(shape(i["geometry"]))]
        if params.get("bbox"):
            bbox = params["bbox"]
            area = box(*(map(float, bbox.split(",")) if isinstance(bbox, str) else bbox))
            found = [i for i in found if area.intersects(shape(i["geometry"]))]
        if params.get("datetime"):
            start, _, end = str(params["datetime"]).partition("/")
            lo = dt.datetime.fromisoformat(start) if start not in ("", "..") else None
            hi = dt.datetime.fromisoformat(end or start) if end != ".." else None
            when = [(i, dt.datetime.fromisoformat(i["properties"]["datetime"])) for i in found]
            found = [i for i, t in when if (lo is None or lo <= t) and (hi is None or t <= hi)]
        start = int(params.get("token") or 0)
        limit = int(params.get("limit") or PAGE)
        links = [{"rel": "root", "href": f"{self.url}/", "type": "application/json"}]
        if start + limit < len(found):
            nxt = {**params, "token": str(start + limit)}
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST",
                              "body": nxt, "type": "application/geo+json"})
            else:
                query = "&".join(f"{k}={v}" for k, v in nxt.items() if k != "intersects")
                links.append({"rel": "next", "href": f"{self.url}/search?{query}",
                              "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": found[start:start + limit],
                "links": links}

    def _landing(self) -> dict[str, Any]:
        json_type = "application/json"
        return {
            "type": "Catalog", "stac_version": "1.0.0", "id": "loopback",
            "description": "NAIP sample on loopback",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/collections",
                "https://api.stacspec.org/v1.0.0/item-search",
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
            ],
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": json_type},
                {"rel": "root", "href": f"{self.url}/", "type": json_type},
                {"rel": "conformance", "href": f"{self.url}/conformance", "type": json_type},
                {"rel": "data", "href": f"{self.url}/collections", "type": json_type},
                {"rel": "search", "href": f"{self.url}/search", "method": "GET",
                 "type": "application/geo+json"},
                {"rel": "search", "href": f"{self.url}/search", "method": "POST",
                 "type": "application/geo+json"},
            ],
        }

    def _collection(self) -> dict[str, Any]:
        collection = pystac.Collection(
            id="naip", description="NAIP sample",
            extent=pystac.Extent(
                pystac.SpatialExtent([[-99.2, 46.99, -99.12, 47.07]]),
                pystac.TemporalExtent([[dt.datetime(2010, 1, 1, tzinfo=dt.UTC), None]])),
            license="proprietary")
        doc = collection.to_dict(include_self_link=False)
        doc["links"] = [{"rel": "root", "href": f"{self.url}/", "type": "application/json"}]
        return doc

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

            def _json(self, doc: Any, status: int = 200) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str, params: dict[str, Any]) -> None:
                path = urlsplit(self.path).path.rstrip("/") or "/"
                if path == "/_log":
                    self._json(api.log)  # type: ignore[arg-type]
                    return
                ranged = {"range": self.headers["Range"]} if self.headers.get("Range") else {}
                api.log.append((method, path, {**params, **ranged}))
                if path == "/":
                    self._json(api._landing())
                elif path == "/conformance":
                    self._json({"conformsTo": api._landing()["conformsTo"]})
                elif path == "/collections":
                    self._json({"collections": [api._collection()], "links": []})
                elif path == "/collections/naip":
                    self._json(api._collection())
                elif path == "/search":
                    if api.fail_search_with:
                        self._json({"code": "Failed", "description": "no"},
                                   api.fail_search_with)
                    else:
                        self._json(api._page(params, method))
                elif path.startswith("/naip/"):
                    self._file(path, method == "HEAD")
                else:
                    self._json({"code": "NotFound", "description": path}, 404)

            def _file(self, path: str, head: bool) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if api.signature is not None and query.get("sig") != [api.signature]:
                    self._json({"code": "AuthenticationFailed"}, 403)
                    return
                target = api.files.get(path.rsplit("/", 1)[-1])
                if target is None or api.href(target.name) != f"{api.url}{path}":
                    self._json({"code": "BlobNotFound"}, 404)
                    return
                data = target.read_bytes()
                first, last, status = 0, len(data) - 1, 200
                ranges = self.headers.get("Range", "")
                if ranges.startswith("bytes="):
                    lo, _, hi = ranges[6:].partition("-")
                    first, last = int(lo), min(int(hi) if hi else len(data) - 1, len(data) - 1)
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(last - first + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                self.end_headers()
                if not head:
                    self.wfile.write(data[first:last + 1])

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                self._route("GET", query)

            def do_HEAD(self) -> None:
                self._route("HEAD", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._route("POST", json.loads(self.rfile.read(length) or b"{}"))

        return Handler

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.server.server_close()


@pytest.fixture
def make_api() -> Iterator[Callable[..., StacApi]]:
    """Start loopback STAC APIs over the bundled scenes (see :class:`StacApi`)."""
    started: list[StacApi] = []

    def make(extra: tuple[Path, ...] = (), **options: Any) -> StacApi:
        started.append(StacApi([*sorted(SAMPLE_NAIP.glob("m_*.tif")), *extra], **options))
        return started[-1]

    yield make
    for api in started:
        api.close()


@pytest.fixture
def stac_api(make_api: Callable[..., StacApi]) -> StacApi:
    return make_api()


@pytest.fixture
def signed_api(make_api: Callable[..., StacApi]) -> StacApi:
    return make_api(signature="s3cr3t-token")


def test_source_parsing_and_the_planetary_computer():
    pc = stac.StacSource.parse(
        "stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip")
    assert (pc.api, pc.collection) == ("https://planetarycomputer.microsoft.com/api/stac/v1",
                                       "naip")
    assert pc.is_planetary_computer
    assert pc.location == "stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip"
    other = stac.StacSource.parse("stac+http://127.0.0.1:8080/collections/naip/")
    assert (other.api, other.is_planetary_computer) == ("http://127.0.0.1:8080", False)
    for bad in ("stac+https://example.com/api", "stac+ftp://h/collections/naip",
                "stac+https://h/collections/", "https://h/collections/naip"):
        with pytest.raises(ValueError, match="stac\\+https://HOST/API/collections/COLLECTION"):
            stac.StacSource.parse(bad)


def test_only_the_planetary_computer_is_signed(monkeypatch):
    import planetary_computer

    seen = []
    monkeypatch.setattr(planetary_computer, "sign_url",
                        lambda href, copy=True: seen.append(href) or f"{href}?sig=pc")
    catalog = stac.StacNaipCatalog(
        "stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip")
    assert catalog.sign is not None
    href = "https://naipeuwest.blob.core.windows.net/naip/v002/nd/2016/x/m_1.tif"
    assert catalog.sign(href) == f"{href}?sig=pc" and seen == [href]
    assert stac.StacNaipCatalog("stac+http://127.0.0.1:1/collections/naip").sign is None


def test_search_finds_the_county_years_by_geometry(stac_api):
    catalog = NaipCatalog(stac_api.location)
    assert catalog.layout == "stac"
    [found] = catalog.scenes(years=[2016], bbox=INSIDE, state="nd")
    assert found.name == "m_4709963_se_14_1_20160816.tif"
    assert found.url == stac_api.href(found.name)  # the asset, not the preview
    searches = [p for m, path, p in stac_api.requests if path == "/search"]
    assert searches[0]["collections"] == ["naip"]
    ring = searches[0]["intersects"]["coordinates"][0]
    assert (min(x for x, _ in ring), min(y for _, y in ring)) == pytest.approx(INSIDE[:2])
    assert searches[0]["datetime"].startswith("2016-01-01")

    both = catalog.scenes(years=[2020, 2010], bbox=INSIDE)
    assert [s.year for s in both] == [2010, 2020]  # 2016 lies in the range, dropped after
    every = catalog.scenes(bbox=INSIDE)
    assert [s.year for s in every] == [2010, 2016, 2020]
    assert len([p for m, path, p in stac_api.requests if path == "/search"]) > 3  # paged
    assert catalog.scenes(years=[2016], bbox=ELSEWHERE) == []
    assert catalog.scenes(years=[2012], bbox=INSIDE) == []


def test_the_loopback_api_pages_get_and_post_searches_alike(stac_api):
    from pystac_client import Client

    client = Client.open(stac_api.url)
    ids = {method: [i["id"] for i in client.search(
        collections=["naip"], bbox=INSIDE, datetime="2010-01-01/2020-12-31",
        method=method).items_as_dicts()] for method in ("GET", "POST")}
    assert ids["GET"] == ids["POST"] == [f"nd_{p.stem}" for p in sorted(
        SAMPLE_NAIP.glob("m_*.tif"))]


def test_assets_are_read_through_vsicurl_with_range_requests(stac_api, real_scene):
    [scene] = NaipCatalog(stac_api.location).scenes(years=[2016], bbox=INSIDE)
    window = ((100, 164), (200, 264))
    with open_raster(scene.url) as src, rasterio.open(real_scene) as local:
        assert (src.crs, src.transform, src.count) == (local.crs, local.transform, 4)
        remote = read_checked(src, scene.url, window=window)
        np.testing.assert_array_equal(remote, local.read(window=window))
    assert storage.size(scene.url) == real_scene.stat().st_size
    reads = [p for m, path, p in stac_api.requests if m == "GET" and path.endswith(scene.name)]
    assert reads and all(p.get("range", "").startswith("bytes=") for p in reads)


def test_opening_an_asset_asks_for_the_asset_only(stac_api):
    """No folder listing and no side-car probes (.aux.xml, .msk, .ovr): on blob storage each
    would be a request of its own, retried under throttling."""
    [scene] = NaipCatalog(stac_api.location).scenes(years=[2020], bbox=INSIDE)
    before = len(stac_api.requests)
    with open_raster(scene.url) as src:
        read_checked(src, scene.url, window=((0, 8), (0, 8)))
    asked = {path for _, path, _ in stac_api.requests[before:]}
    assert asked == {urlsplit(scene.url).path}


def test_assets_that_need_a_signature_are_signed_when_read(signed_api, real_scene):
    def sign(href: str) -> str:
        return f"{href}?sv=2024&sig={signed_api.signature}"

    [scene] = stac.StacNaipCatalog(signed_api.location, sign=sign).scenes(
        years=[2016], bbox=INSIDE)
    assert "sig=" not in scene.url  # found unsigned; manifests never record a token
    with open_raster(scene.url) as src:
        assert src.read(1, window=((0, 8), (0, 8))).shape == (8, 8)
    assert storage.size(scene.url) == real_scene.stat().st_size


def test_a_refused_signature_is_an_error_without_the_token(signed_api, monkeypatch):
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "1")
    [scene] = stac.StacNaipCatalog(
        signed_api.location, sign=lambda href: f"{href}?sv=2024&sig=wrong-secret").scenes(
        years=[2020], bbox=INSIDE)
    with pytest.raises(RasterError) as err:
        with open_raster(scene.url):
            pass
    assert scene.name in str(err.value)
    assert "wrong-secret" not in str(err.value)
    assert err.value.__cause__ is None or "wrong-secret" not in str(err.value.__cause__)


def test_a_corrupt_signed_scene_is_named_without_the_token(make_api, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "1")
    corrupt = tmp_path / "m_4709963_se_14_1_20180701.tif"
    corrupt.write_bytes(b"II*\x00" + b"not a tiff" * 2000)
    api = make_api(extra=(corrupt,), signature="s3cr3t-token")
    [scene] = stac.StacNaipCatalog(
        api.location, sign=lambda href: f"{href}?sv=2024&sig=s3cr3t-token").scenes(
        years=[2018], bbox=INSIDE)
    with pytest.raises(RasterError) as err:
        with open_raster(scene.url) as src:
            read_checked(src, scene.url)
    message = str(err.value)
    assert corrupt.name in message and "s3cr3t-token" not in message
    assert err.value.__cause__ is None or "s3cr3t-token" not in str(err.value.__cause__)


def test_unsigned_catalogue_reads_assets_as_they_are(signed_api, monkeypatch):
    # The loopback API is not the Planetary Computer: nothing signs its assets.
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "1")
    [scene] = NaipCatalog(signed_api.location).scenes(years=[2010], bbox=INSIDE)
    with pytest.raises(RasterError, match=scene.name):
        with open_raster(scene.url):
            pass


def test_api_errors_name_the_catalogue(make_api, monkeypatch):
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "1")
    refusing = make_api(fail_search_with=400)
    with pytest.raises(ValueError, match=f"STAC API {refusing.url} refused the NAIP search"):
        NaipCatalog(refusing.location).scenes(years=[2016], bbox=INSIDE)
    down = make_api(fail_search_with=503)
    with pytest.raises(storage.StorageUnavailable, match="cannot search stac\\+http"):
        NaipCatalog(down.location).scenes(years=[2016], bbox=INSIDE)


def test_item_without_a_naip_geotiff_is_named(make_api):
    api = make_api(drop_asset="image")  # only the PNG preview is left
    with pytest.raises(ValueError, match=f"STAC item '{api.items[0]['id']}'.*no NAIP"):
        NaipCatalog(api.location).scenes(bbox=INSIDE)


def test_layout_must_match_the_root(stac_api):
    with pytest.raises(ValueError, match="do not match"):
        NaipCatalog(stac_api.location, layout="flat")
    with pytest.raises(ValueError, match="do not match"):
        NaipCatalog(str(SAMPLE_NAIP), layout="stac")


def test_county_tiles_from_a_stac_source_as_from_the_folder(signed_api, tmp_path, real_scene):
    catalog = stac.StacNaipCatalog(signed_api.location,
                                   sign=lambda href: f"{href}?sig={signed_api.signature}")
    catalog.sign_reads([signed_api.href(real_scene.name)])  # as a scoring process would
    config = TilingConfig(chips="all")
    tiled = {}
    for source, naip in (("stac", signed_api.location), ("folder", str(SAMPLE_NAIP))):
        county = County(name="stutsman-nd", state="nd", bbox=INSIDE, naip=naip)
        [result] = build_county(county, [2016], str(tmp_path / source), config)
        assert result.scenes == (real_scene.name,)
        tiled[source] = pd.read_parquet(result.manifest_url)
    stac_tiles, folder_tiles = tiled["stac"], tiled["folder"]
    assert set(stac_tiles["scene_url"]) == {signed_api.href(real_scene.name)}  # unsigned
    assert list(stac_tiles["tile_id"]) == list(folder_tiles["tile_id"])
    assert len(stac_tiles) > 10
    for remote, local in zip(stac_tiles["image_url"], folder_tiles["image_url"], strict=True):
        # Chips cut from the scene read over /vsicurl/ are the chips cut from the file.
        assert storage.read_bytes(remote) == storage.read_bytes(local)
