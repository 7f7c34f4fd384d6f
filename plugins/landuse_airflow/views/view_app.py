"""The Land use view's FastAPI app, mounted by the plugin at ``/landuse`` on the API server.

Airflow does not protect a plugin's endpoints by itself: every route here depends on
Airflow's own :func:`~airflow.api_fastapi.core_api.security.get_user` (the JWT the UI keeps
in its ``_token`` cookie, or a bearer token) and on the auth manager allowing the user to
read the DAG's runs; anonymous requests get 401, bad tokens 403. Writing a review answer
needs more (:func:`_review_writer`): the right to edit ``change_detection`` runs, the JWT
in an ``Authorization: Bearer`` header (a cookie alone is refused, so no cross-site form or
script can post one) and no foreign ``Origin``. Files come only from the
configured storage root (``LANDUSE_STORAGE_ROOT``) through :mod:`.view_data`; the map
library is the vendored npm package (``scripts/setup.sh``), so nothing is fetched from the
internet, and the Content-Security-Policy keeps the page to this server.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from landuse import config, storage
from landuse_airflow.views import run_data, view_data

STATIC = Path(__file__).resolve().parent / "static"
PROJECT = Path(__file__).resolve().parents[3]
CHANGE_DAG = "change_detection"
SCORING_DAG = "landuse_scoring"
TRAINING_DAG = "landuse_training"
# The map library's files, served from the npm package scripts/setup.sh vendors.
LEAFLET_FILES = frozenset({
    "leaflet.js", "leaflet.css", "images/layers.png", "images/layers-2x.png",
    "images/marker-icon.png", "images/marker-icon-2x.png", "images/marker-shadow.png"})
OWN_FILES = {"landuse.js": "text/javascript", "landuse.css": "text/css"}
# Lifetime of the token the review page sends in its Authorization header: short, since
# script can read it (the page asks for a new one when it runs out).
PAGE_TOKEN_SECONDS = 15 * 60
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
       "form-action 'none'")


def leaflet_dir() -> Path:
    """Where the vendored Leaflet's ``dist`` folder is (``LANDUSE_LEAFLET_DIR`` overrides)."""
    return Path(os.environ.get("LANDUSE_LEAFLET_DIR")
                or PROJECT / ".tools" / "node_modules" / "leaflet" / "dist")


def _authenticated_user() -> Callable[..., Any]:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def _may(user: Any, method: str, dag_id: str) -> bool:
    """Whether the auth manager lets ``user`` read (``GET``) or edit (``PUT``) the runs of
    ``dag_id``."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    return bool(get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id),
        user=user))


def _require_dag_reader(user: Any, dag_id: str) -> None:
    """403 unless the auth manager lets ``user`` read the runs of ``dag_id``."""
    if not _may(user, "GET", dag_id):
        raise HTTPException(403, f"not allowed to read the runs of {dag_id}")


def _own_origins(request: Request) -> set[str]:
    """This server's origins: the one the request came to and the configured base URL's."""
    from airflow.configuration import conf

    origins = {f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"}
    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    if base.scheme and base.netloc:
        origins.add(f"{base.scheme}://{base.netloc}")
    return origins


def _review_writer(request: Request, user: Any) -> Any:
    """``user`` if they may write a review answer with this request, else 401/403.

    A browser sends the ``_token`` cookie with any request to this server, a cross-site
    form's included; it never lets a cross-site form set a header, nor a cross-site script
    without a CORS preflight, which this app does not answer. So the token must come in an
    ``Authorization: Bearer`` header. A foreign ``Origin`` is refused as well, for browsers
    or proxies that would let one through.
    """
    origin = request.headers.get("origin")
    if origin is not None and origin not in _own_origins(request):
        raise HTTPException(403, f"requests from {origin} may not write reviews")
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise HTTPException(401, "writing a review needs the token in an Authorization: "
                                 "Bearer header; the session cookie alone is not enough")
    if not _may(user, "PUT", CHANGE_DAG):
        raise HTTPException(403, f"not allowed to review: editing {CHANGE_DAG} runs is needed")
    return user


@contextmanager
def _errors() -> Iterator[None]:
    """The view's errors as HTTP answers that say what was wrong, never where files are."""
    try:
        yield
    except view_data.NotFound as err:
        raise HTTPException(404, str(err)) from err
    except PermissionError as err:
        raise HTTPException(403, str(err)) from err
    except storage.StorageUnavailable as err:
        raise HTTPException(503, "storage is unavailable; try again later") from err
    except storage.StorageError as err:
        raise HTTPException(404, "not found in storage") from err
    except ValueError as err:
        raise HTTPException(400, str(err)) from err


def _secure(response: Response, cache: bool = False) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, max-age=600" if cache else "no-store"
    return response


def _basemap(scenes: Sequence[str]) -> list[dict[str, Any]]:
    """The map's base layers: each scene's index and bounds."""
    return [{"index": i, "bounds": view_data.quicklook(scene)[1]}
            for i, scene in enumerate(scenes)]


def _quicklook(scenes: Sequence[str], index: int, what: str) -> Response:
    """The quick-look image of scene ``index`` of ``scenes`` (NotFound past the end)."""
    if not 0 <= index < len(scenes):
        raise view_data.NotFound(f"no scene {index} for {what}")
    image, _ = view_data.quicklook(scenes[index])
    return _secure(Response(image, media_type="image/webp"), cache=True)


def create_app(root: str | None = None) -> FastAPI:
    """The view's app; ``root`` is the storage root it serves (default: the configured one,
    read per request so that the deployment's setting applies)."""
    app = FastAPI(title="Land use view", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_authenticated_user())])
    get_user = _authenticated_user()

    def storage_root() -> str:
        return root or config.storage_root()

    def report(county: str, pair: str) -> view_data.Report:
        with _errors():
            return view_data.open_report(storage_root(), county, pair)

    def change_reader(user: Any = Depends(get_user)) -> None:  # noqa: B008 (FastAPI idiom)
        _require_dag_reader(user, CHANGE_DAG)

    def scoring_reader(user: Any = Depends(get_user)) -> None:  # noqa: B008
        _require_dag_reader(user, SCORING_DAG)

    def training_reader(user: Any = Depends(get_user)) -> None:  # noqa: B008
        _require_dag_reader(user, TRAINING_DAG)

    def predictions(county: str, year: str) -> run_data.Predictions:
        with _errors():
            return run_data.open_predictions(storage_root(), county, year)

    def page(request: Request, view: dict[str, Any]) -> Response:
        shell = (STATIC / "page.html").read_text()
        base = request.scope.get("root_path", "").rstrip("/")
        config_json = json.dumps({"base": base, **view}).replace("</", "<\\/")
        body = shell.replace("{{BASE}}", html.escape(base)).replace("{{VIEW}}", config_json)
        return _secure(HTMLResponse(body))

    # --- pages ------------------------------------------------------------------------------

    @app.get("/", dependencies=[Depends(change_reader)])
    def index(request: Request) -> Response:
        return page(request, {"page": "index"})

    @app.get("/runs/{dag_id}/{run_id}")
    def run_page(request: Request, dag_id: str, run_id: str,
                 user: Any = Depends(get_user)) -> Response:  # noqa: B008
        _require_dag_reader(user, dag_id)
        return page(request, {"page": "run", "dag_id": dag_id, "run_id": run_id})

    @app.get("/change/{county}/{pair}", dependencies=[Depends(change_reader)])
    def change_page(request: Request, county: str, pair: str) -> Response:
        report(county, pair)
        return page(request, {"page": "change", "county": county, "pair": pair})

    @app.get("/review/{county}/{pair}", dependencies=[Depends(change_reader)])
    def review_page(request: Request, county: str, pair: str) -> Response:
        # The option of the DAG's review task that the page's "Done" button chooses.
        from landuse_airflow.operators.review import PUBLISH

        report(county, pair)
        return page(request, {"page": "review", "county": county, "pair": pair,
                              "publish_option": PUBLISH})

    @app.get("/static/{name}")
    def own_static(name: str) -> Response:
        if name not in OWN_FILES:
            raise HTTPException(404, "no such file")
        return _secure(Response((STATIC / name).read_bytes(), media_type=OWN_FILES[name]))

    @app.get("/vendor/leaflet/{name:path}")
    def leaflet(name: str) -> Response:
        if name not in LEAFLET_FILES:
            raise HTTPException(404, "no such file")
        path = leaflet_dir() / name
        if not path.is_file():
            raise HTTPException(503, "the map library is not installed: run scripts/setup.sh")
        media = {".js": "text/javascript", ".css": "text/css"}.get(path.suffix, "image/png")
        return _secure(Response(path.read_bytes(), media_type=media), cache=True)

    # --- data -------------------------------------------------------------------------------

    @app.get("/api/reports", dependencies=[Depends(change_reader)])
    def reports() -> Response:
        with _errors():
            return _secure(JSONResponse({"reports": view_data.list_reports(storage_root())}))

    @app.get("/api/runs/{dag_id}/{run_id}")
    def run_reports(dag_id: str, run_id: str, user: Any = Depends(get_user)) -> Response:  # noqa: B008
        _require_dag_reader(user, dag_id)
        with _errors():
            return _secure(JSONResponse(_run_view(dag_id, run_id, storage_root())))

    # --- scoring and training runs ----------------------------------------------------------

    @app.get("/api/scoring/{county}/{year}", dependencies=[Depends(scoring_reader)])
    def scoring(county: str, year: str) -> Response:
        p = predictions(county, year)
        with _errors():
            basemap = _basemap(run_data.scoring_scenes(p))
            return _secure(JSONResponse({**run_data.scoring_view(p), "basemap": basemap}))

    @app.get("/api/scoring/{county}/{year}/layers/{name}.png",
             dependencies=[Depends(scoring_reader)])
    def scoring_layer(county: str, year: str, name: str) -> Response:
        p = predictions(county, year)
        with _errors():
            return _secure(Response(run_data.scoring_layer_png(p, name),
                                    media_type="image/png"), cache=True)

    @app.get("/api/scoring/{county}/{year}/basemap/{index}.webp",
             dependencies=[Depends(scoring_reader)])
    def scoring_basemap(county: str, year: str, index: int) -> Response:
        p = predictions(county, year)
        with _errors():
            return _quicklook(run_data.scoring_scenes(p), index, f"{county} {year}")

    @app.get("/api/training/{run_id}/candidates/{mlflow_run_id}/confusion.png",
             dependencies=[Depends(training_reader)])
    def candidate_confusion(run_id: str, mlflow_run_id: str) -> Response:
        with _errors():
            png = run_data.confusion_png(storage_root(), run_id, mlflow_run_id)
        return _secure(Response(png, media_type="image/png"), cache=True)

    @app.get("/api/change/{county}/{pair}", dependencies=[Depends(change_reader)])
    def change(county: str, pair: str) -> Response:
        r = report(county, pair)
        with _errors():
            return _secure(JSONResponse({
                **view_data.headline(r), "summary": view_data.public_summary(r),
                "layers": view_data.layers(r), "basemap": _basemap(view_data.scenes(r))}))

    @app.get("/api/change/{county}/{pair}/files/{name}", dependencies=[Depends(change_reader)])
    def report_file(county: str, pair: str, name: str) -> Response:
        r = report(county, pair)
        with _errors():
            data, media = view_data.report_file(r, name)
        response = Response(data, media_type=media)
        if not media.startswith("image/png"):
            response.headers["Content-Disposition"] = (
                f'attachment; filename="{r.county}_{r.pair}_{name}"')
        return _secure(response, cache=True)

    @app.get("/api/change/{county}/{pair}/layers/{name}.png",
             dependencies=[Depends(change_reader)])
    def layer(county: str, pair: str, name: str) -> Response:
        r = report(county, pair)
        with _errors():
            return _secure(Response(view_data.layer_png(r, name), media_type="image/png"),
                           cache=True)

    @app.get("/api/change/{county}/{pair}/basemap/{index}.webp",
             dependencies=[Depends(change_reader)])
    def basemap(county: str, pair: str, index: int) -> Response:
        r = report(county, pair)
        with _errors():
            return _quicklook(view_data.scenes(r), index, f"{county} {pair}")

    @app.get("/api/change/{county}/{pair}/tiles/{tile_id}", dependencies=[Depends(change_reader)])
    def tile(county: str, pair: str, tile_id: str) -> Response:
        r = report(county, pair)
        with _errors():
            return _secure(JSONResponse(view_data.tile_record(r, tile_id)))

    @app.get("/api/change/{county}/{pair}/tiles/{tile_id}/{which}.png",
             dependencies=[Depends(change_reader)])
    def tile_image(county: str, pair: str, tile_id: str, which: str) -> Response:
        r = report(county, pair)
        with _errors():
            data, media = view_data.tile_image(r, tile_id, which)
        return _secure(Response(data, media_type=media), cache=True)

    # --- review mode ----------------------------------------------------------------------

    @app.get("/api/token")
    def page_token(user: Any = Depends(get_user)) -> Response:  # noqa: B008
        # The session cookie may be HttpOnly (it is when Airflow itself sets or refreshes
        # it), so the page cannot read it: it asks for a short-lived token of the same user
        # here. A cross-site page cannot read this answer (no CORS, JSON with nosniff).
        from airflow.api_fastapi.app import get_auth_manager

        token = get_auth_manager().generate_jwt(
            user, expiration_time_in_seconds=PAGE_TOKEN_SECONDS)
        return _secure(JSONResponse({"token": token, "expires_in": PAGE_TOKEN_SECONDS}))

    @app.get("/api/change/{county}/{pair}/review", dependencies=[Depends(change_reader)])
    def review_data(county: str, pair: str, user: Any = Depends(get_user)) -> Response:  # noqa: B008
        r = report(county, pair)
        with _errors():
            data = view_data.review_view(r, str(user.get_name()))
        data["can_write"] = _may(user, "PUT", CHANGE_DAG)
        data["waiting"] = waiting_reviews(r.county, r.pair)
        return _secure(JSONResponse(data))

    def review_writer(request: Request, user: Any = Depends(get_user)) -> Any:  # noqa: B008
        return _review_writer(request, user)

    @app.post("/api/change/{county}/{pair}/reviews", status_code=201)
    def add_review(county: str, pair: str, body: Any = Body(None),  # noqa: B008
                   user: Any = Depends(review_writer)) -> Response:  # noqa: B008
        r = report(county, pair)
        with _errors():
            entry = view_data.record_review(r, str(user.get_name()), body)
        return _secure(JSONResponse(entry, status_code=201))

    return app


def waiting_reviews(county: str, pair: str) -> list[dict[str, Any]]:
    """The ``change_detection`` human-in-the-loop tasks waiting for the review of this
    report: ``dag_id``, ``run_id``, ``task_id``, ``map_index`` and ``subject`` of each."""
    return matching_reviews(_awaiting_input(CHANGE_DAG), county, pair)


def matching_reviews(tasks: Sequence[dict[str, Any]], county: str,
                     pair: str) -> list[dict[str, Any]]:
    """The tasks whose subject names this report as ``"{county} {A}-{B}"``, a whole word
    (so ``county-1`` does not match ``county-11`` nor ``my-county-1``)."""
    words = re.compile(rf"(?<![\w-]){re.escape(f'{county} {pair}')}(?![\w-])")
    return [t for t in tasks if words.search(str(t.get("subject") or ""))]


def _awaiting_input(dag_id: str) -> list[dict[str, Any]]:
    """The unanswered human-in-the-loop tasks of ``dag_id`` that wait for input now."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    query = (select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id,
                    TaskInstance.map_index, HITLDetail.subject)
             .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
             .where(TaskInstance.dag_id == dag_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                    HITLDetail.responded_at.is_(None))
             .order_by(TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index))
    with create_session() as session:
        return [dict(row._mapping) for row in session.execute(query)]


def _run_view(dag_id: str, run_id: str, root: str) -> dict[str, Any]:
    """What a DAG run published that this view can show, from its Asset events: the change
    reports of a ``change_detection`` run, the county-years a ``landuse_scoring`` run scored,
    the candidates and champion of a ``landuse_training`` run; only what lies under the
    configured root (``elsewhere`` counts the rest)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(
            AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
            .order_by(AssetEvent.timestamp, AssetEvent.id)).all()
        extras = [dict(e.extra or {}) for e in events]
    out: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "kind": None, "reports": [],
                           "elsewhere": 0}
    if dag_id == CHANGE_DAG:
        out["kind"] = "change"
        _change_reports(out, extras, root)
    elif dag_id == SCORING_DAG:
        out["kind"] = "scoring"
        _scored_years(out, extras, root)
    elif dag_id == TRAINING_DAG:
        out["kind"] = "training"
        out["training"] = run_data.training_view(root, run_id)
        champion = [e for e in extras if e.get("model_id") and "champion_url" in e]
        if champion and champion[-1].get("champion_url") != _champion_url(root):
            out["elsewhere"] += 1
        if not out["training"]["candidates"]:
            out["note"] = ("this run's candidates are not under this server's storage root "
                           "or not in its MLflow tracking store")
    else:
        out["note"] = (f"the Land use view shows change_detection, landuse_scoring and "
                       f"landuse_training runs; {dag_id} is none of them")
    return out


def _champion_url(root: str) -> str:
    from landuse.models.tracking import champion_url, models_root

    return champion_url(models_root(root))


def _change_reports(out: dict[str, Any], extras: list[dict[str, Any]], root: str) -> None:
    from landuse.change import change_url

    reports: dict[tuple[str, int, int], dict[str, Any]] = {}
    for extra in extras:
        try:
            county = storage.safe_name(str(extra["county"]))
            year_a, year_b = int(extra["year_a"]), int(extra["year_b"])
        except (KeyError, TypeError, ValueError):
            continue
        if extra.get("url") and extra["url"] != change_url(root, county, year_a, year_b):
            out["elsewhere"] += 1  # written under another root: not this server's to serve
            continue
        # A reviewed report has two events (published, then published with its review):
        # one row, the later event's figures on top.
        report = reports.setdefault((county, year_a, year_b), {
            "county": county, "year_a": year_a, "year_b": year_b,
            "pair": f"{year_a}-{year_b}"})
        report.update({k: extra[k] for k in ("newly_developed", "changed", "tiles", "review")
                       if k in extra})
    out["reports"] = sorted(reports.values(), key=lambda r: (r["county"], r["pair"]))


def _scored_years(out: dict[str, Any], extras: list[dict[str, Any]], root: str) -> None:
    scored: list[dict[str, Any]] = []
    for extra in extras:
        try:
            county = storage.safe_name(str(extra["county"]))
            year = run_data.parse_year(extra["year"])
        except (KeyError, TypeError, ValueError):
            continue
        if extra.get("url") != run_data.predictions_location(root, county, year):
            out["elsewhere"] += 1
            continue
        row: dict[str, Any] = {"county": county, "year": year}
        row.update({k: extra[k] for k in ("tiles", "errors", "accuracy", "group_accuracy",
                                          "model_id", "seconds") if k in extra})
        scored.append(row)
    out["scored"] = sorted(scored, key=lambda r: (r["county"], r["year"]))
