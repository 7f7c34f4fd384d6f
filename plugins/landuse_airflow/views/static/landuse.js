// The Land use view: lists change reports and shows one as a map beside its report.
// Every request goes to this server's /landuse API with the Airflow UI's own session cookie;
// the page builds its DOM with textContent only (report contents are never parsed as HTML).
(function () {
  "use strict";
  const view = JSON.parse(document.getElementById("landuse-view").textContent);
  const base = view.base;
  const api = base + "/api";
  const main = document.getElementById("main");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(`${response.status}: ${detail}`);
    }
    return response.json();
  }

  function fmt(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
    if (value === null || value === undefined) return "";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function enc(...parts) { return parts.map(encodeURIComponent).join("/"); }

  function table(rows, columns) {
    columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
    return el("table", {},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => el("td", { text: fmt(r[c]) }))))));
  }

  function fail(target, err) {
    target.replaceChildren(el("p", { class: "error", text: `Could not load: ${err.message}` }));
  }

  function reportLink(r) {
    return el("a", { href: `${base}/change/${enc(r.county, r.pair)}`, target: "_top",
                     text: `${r.county} ${r.year_a} → ${r.year_b}` });
  }

  // --- pages ---------------------------------------------------------------------------

  async function indexPage() {
    const data = await getJSON(`${api}/reports`);
    main.replaceChildren(el("h1", { text: "Land-use change reports" }));
    if (!data.reports.length) {
      main.append(el("p", { class: "muted", text: "No change report yet: run change_detection." }));
      return;
    }
    main.append(table(data.reports.map((r) => ({ ...r, county: r.county })),
      ["county", "year_a", "year_b", "reference", "tiles", "newly_developed", "changed"]));
    const rows = main.querySelectorAll("tbody tr");
    data.reports.forEach((r, i) => rows[i].firstChild.replaceChildren(reportLink(r)));
  }

  async function runPage() {
    const data = await getJSON(`${api}/runs/${enc(view.dag_id, view.run_id)}`);
    main.replaceChildren();
    if (data.kind === "training") return renderTraining(main, data);
    const items = data.kind === "scoring"
      ? (data.scored || []).map((s) => ({ label: `${s.county} ${s.year}`, item: s,
          render: (body) => renderScoring(body, s.county, String(s.year), s) }))
      : data.reports.map((r) => ({ label: `${r.county} ${r.pair}`, item: r,
          render: (body) => renderReport(body, r.county, r.pair) }));
    if (!items.length) {
      const what = data.kind === "scoring" ? "predictions" : "change report";
      main.append(el("p", { class: "muted", text: data.note ||
        (data.elsewhere ? `This run wrote its ${what} under another storage root than this server serves.`
                        : `This run published no ${what}.`) }));
      return;
    }
    const tabs = el("div", { class: "tabs", role: "tablist" });
    const body = el("div");
    main.append(tabs, body);
    const buttons = items.map((it) => el("button", { type: "button", text: it.label,
                                                     onclick: () => show(it) }));
    tabs.append(...buttons);
    function show(it) {
      buttons.forEach((b, i) => b.setAttribute("aria-pressed", String(items[i] === it)));
      it.render(body).catch((err) => fail(body, err));
    }
    show(items[0]);
  }

  // --- a scoring run: one county-year's class map and class shares ---------------------

  async function renderScoring(target, county, year, event) {
    const root = `${api}/scoring/${enc(county, year)}`;
    const data = await getJSON(root);
    if (map) { map.remove(); map = null; }
    const mapDiv = el("div", { id: "map" });
    const aside = el("aside");
    target.replaceChildren(
      el("h1", { text: `${data.county} ${data.year}: predicted land use` }),
      el("div", { class: "report" }, el("div", { class: "report-map" }, mapDiv), aside));
    map = L.map(mapDiv, { zoomSnap: 0.25 });
    map.attributionControl.setPrefix(false);
    const everything = L.latLngBounds([]);
    const overlays = {};
    if (data.basemap.length) {
      overlays[`NAIP ${data.year} imagery`] = L.layerGroup(data.basemap.map((s) => {
        everything.extend(s.bounds);
        return L.imageOverlay(`${root}/basemap/${s.index}.webp`, s.bounds,
          { className: "landuse-basemap", attribution: `${data.year} scenes` });
      })).addTo(map);
    }
    const classes = L.layerGroup(data.layers.map((layer) => {
      everything.extend(layer.bounds);
      return L.imageOverlay(`${root}/layers/${encodeURIComponent(layer.name)}.png`, layer.bounds,
        { className: "landuse-layer landuse-layer-classes", opacity: 0.8 });
    })).addTo(map);
    const title = `Predicted classes ${data.year}`;
    overlays[title] = classes;
    const present = new Set(data.shares.map((s) => s.class));
    const legend = new Map([[classes, { title, entries: data.legend.filter((e) => present.has(e.name)) }]]);
    L.control.layers(null, overlays, { collapsed: false }).addTo(map);
    legendControl(legend).addTo(map);
    L.control.scale({ imperial: false }).addTo(map);
    if (everything.isValid()) map.fitBounds(everything); else map.setView([0, 0], 2);

    const figures = [`${fmt(data.scored)} of ${fmt(data.tiles)} tiles scored`];
    if (data.models.length) figures.push(`model ${data.models.join(", ")}`);
    if (event && event.seconds !== undefined) figures.push(`${fmt(event.seconds)} s on Spark`);
    aside.append(el("p", { text: figures.join("; ") + "." }));
    if (data.agreement_with_labels) {
      const a = data.agreement_with_labels;
      aside.append(el("p", { class: "muted", text: `Agreement with the NLCD labels of ${fmt(a.tiles)} ` +
        `labelled tiles: ${fmt(a.accuracy)} (NLCD labels of the tiles, not field truth).` }));
    }
    aside.append(el("h2", { text: "Class shares" }), el("table", { class: "shares" },
      el("thead", {}, el("tr", {}, ["class", "tiles", "share", ""].map((c) => el("th", { text: c })))),
      el("tbody", {}, data.shares.map((s) => el("tr", {},
        el("td", {}, el("span", { class: "swatch", style: s.colour ? `background:${s.colour}` : "" }), s.class),
        el("td", { text: fmt(s.tiles) }),
        el("td", { text: `${(100 * s.share).toFixed(1)} %` }),
        el("td", { class: "share-bar" }, el("span", { class: "bar" },
          el("span", { style: `width:${Math.round(100 * s.share)}%` }))))))));
  }

  // --- a training run: candidates, decision, the champion's held-out figures -------------

  function renderTraining(target, data) {
    const t = data.training;
    target.append(el("h1", { text: "Training run: candidates and champion" }));
    if (!t.candidates.length) {
      target.append(el("p", { class: "muted", text: data.note || "This run tracked no candidate." }));
      return;
    }
    if (t.decision) {
      const d = t.decision;
      target.append(el("p", { class: "decision" }, el("strong", { text: `Decision: ${d.decision}. ` }),
        `Challenger ${d.challenger}; champion now ${d.champion || "none"}. ${d.reason || ""}`));
    }
    const rows = t.candidates.map((c) => ({ candidate: c.name, backbone: c.backbone, method: c.method,
      accuracy: c.accuracy, group_accuracy: c.group_accuracy, test_accuracy: c.test_accuracy,
      decision: c.decision || "", model_id: c.model_id }));
    target.append(el("h2", { text: "Candidates (validation, from MLflow)" }),
      table(rows, ["candidate", "backbone", "method", "accuracy", "group_accuracy", "test_accuracy",
                   "decision", "model_id"]));
    const classes = [...new Set(t.candidates.flatMap((c) => Object.keys(c.per_class || {})))];
    if (classes.length) {
      target.append(el("h2", { text: "Precision / recall per class" }),
        table(t.candidates.map((c) => Object.fromEntries([["candidate", c.name],
          ...classes.map((k) => [k, c.per_class[k] ? `${fmt(c.per_class[k].precision)} / ${fmt(c.per_class[k].recall)}` : ""])])),
        ["candidate", ...classes]));
    }
    const champion = t.champion && t.champion.test;
    if (champion && champion.metrics) {
      const m = champion.metrics;
      target.append(el("h2", { text: `Champion ${t.champion.model_id} on held-out test counties` }),
        el("p", { text: `Accuracy ${fmt(m.accuracy)}, group accuracy ${fmt(m.group_accuracy)} on ` +
          `${fmt(m.tiles)} tiles of ${(m.counties || []).join(", ")}` +
          (champion.trained_on_synthetic ? " (trained on synthetic imagery only)." : ".") }));
      if (Array.isArray(m.confusion) && m.classes) target.append(confusionTable(m.confusion, m.classes));
    } else if (t.champion) {
      target.append(el("p", { class: "muted", text: `No held-out evaluation of ${t.champion.model_id}` +
        (champion && champion.note ? `: ${champion.note}` : ".") }));
    }
    target.append(el("h2", { text: "Confusion matrices (validation, MLflow artifacts)" }),
      el("div", { class: "confusions" }, t.candidates.map((c) => el("figure", {},
        el("img", { class: "confusion", alt: `confusion matrix of ${c.name}`,
                    src: `${api}/training/${enc(data.run_id)}/candidates/${enc(c.mlflow_run_id)}/confusion.png` }),
        el("figcaption", { text: c.name })))));
  }

  function confusionTable(matrix, classes) {
    const max = Math.max(1, ...matrix.flat());
    return el("table", { class: "confusion-table" },
      el("thead", {}, el("tr", {}, el("th", { text: "truth \\ predicted" }), classes.map((c) => el("th", { text: c })))),
      el("tbody", {}, matrix.map((row, i) => el("tr", {}, el("th", { text: classes[i] }),
        row.map((v, j) => el("td", { text: fmt(v), class: i === j ? "diagonal" : "",
          style: `background:rgba(11,107,203,${(0.6 * v / max).toFixed(3)})` }))))));
  }

  // --- one change report -----------------------------------------------------------------

  let map = null;

  async function renderReport(target, county, pair) {
    const root = `${api}/change/${enc(county, pair)}`;
    const data = await getJSON(root);
    const files = data.summary.files || [];
    if (map) { map.remove(); map = null; }
    const mapDiv = el("div", { id: "map" });
    const tilePanel = el("div", { id: "tile-panel" },
      el("p", { class: "muted", text: "Click a changed tile (outlined) to see both years." }));
    const aside = el("aside");
    target.replaceChildren(
      el("h1", { text: `${data.county}: land-use change ${data.year_a} → ${data.year_b}` }),
      el("p", {}, el("a", { href: `${base}/review/${enc(county, pair)}`, target: "_top",
                             class: "review-link", text: "Review the flagged tiles →" })),
      el("div", { class: "report" }, el("div", { class: "report-map" }, mapDiv, tilePanel), aside));

    map = L.map(mapDiv, { zoomSnap: 0.25, preferCanvas: false });
    map.attributionControl.setPrefix(false);
    const everything = L.latLngBounds([]);
    const overlays = {};
    if (data.basemap.length) {
      const naip = L.layerGroup(data.basemap.map((s) => {
        everything.extend(s.bounds);
        return L.imageOverlay(`${root}/basemap/${s.index}.webp`, s.bounds,
          { className: "landuse-basemap", attribution: `${data.year_b} scenes of the report` });
      })).addTo(map);
      overlays[`NAIP ${data.year_b} imagery`] = naip;
    }
    const byKind = {};
    for (const layer of data.layers) (byKind[layer.kind] = byKind[layer.kind] || []).push(layer);
    const legendOf = new Map();
    for (const [kind, members] of Object.entries(byKind)) {
      const group = L.layerGroup(members.map((m) => {
        everything.extend(m.bounds);
        return L.imageOverlay(`${root}/layers/${encodeURIComponent(m.name)}.png`, m.bounds,
          { className: `landuse-layer landuse-layer-${kind}`, opacity: kind === "change" ? 0.75 : 0.85 });
      }));
      const label = layerLabel(kind, members[0].description, data);
      overlays[label] = group;
      legendOf.set(group, { title: label, entries: members[0].legend });
      if (kind === "change") group.addTo(map);
    }
    const cells = await changedTiles(root, files, tilePanel, data);
    if (cells) { overlays["Changed tiles (clickable)"] = cells.addTo(map); }
    L.control.layers(null, overlays, { collapsed: false }).addTo(map);
    legendControl(legendOf).addTo(map);
    L.control.scale({ imperial: false }).addTo(map);
    if (everything.isValid()) map.fitBounds(everything);
    else map.setView([0, 0], 2);
    renderAside(aside, root, data, files);
  }

  function layerLabel(kind, description, data) {
    if (kind === `groups_${data.year_a}`) return `Year A (${data.year_a}) groups`;
    if (kind === `groups_${data.year_b}`) return `Year B (${data.year_b}) groups`;
    if (kind === "reference") return `Year A reference: ${description}`;
    if (kind === "change") return `Change ${data.year_a} → ${data.year_b}`;
    return description;
  }

  function legendControl(legendOf) {
    const control = L.control({ position: "bottomright" });
    control.onAdd = function (m) {
      const box = el("div", { class: "legend", id: "legend" });
      const draw = () => {
        box.replaceChildren();
        for (const [group, legend] of legendOf) {
          if (!m.hasLayer(group)) continue;
          box.append(el("h3", { text: legend.title }),
            ...legend.entries.map((e) => el("div", {},
              el("span", { class: "swatch", style: `background:${e.colour}` }), e.name)));
        }
        box.style.display = box.childElementCount ? "" : "none";
      };
      m.on("overlayadd overlayremove", draw);
      draw();
      return box;
    };
    return control;
  }

  async function changedTiles(root, files, panel, data) {
    if (!files.includes("changes.geojson")) return null;
    const geojson = await getJSON(`${root}/files/changes.geojson`);
    let selected = null;
    return L.geoJSON(geojson, {
      style: (f) => ({
        className: "landuse-cell", weight: 2, fillOpacity: 0.05,
        color: f.properties.newly_developed ? "#d00000" : "#ff8c00",
        dashArray: f.properties.newly_developed === false && f.properties.hotspot ? "3 3" : null,
      }),
      onEachFeature: (feature, layer) => {
        layer.on("click", () => {
          if (selected) selected.setStyle({ weight: 2 });
          selected = layer;
          layer.setStyle({ weight: 4 });
          showTile(root, feature.id || feature.properties.tile_id, panel, data)
            .catch((err) => fail(panel, err));
        });
      },
    });
  }

  async function showTile(root, tileId, panel, data) {
    const t = await getJSON(`${root}/tiles/${encodeURIComponent(tileId)}`);
    const groups = [
      ["reference", t.ref_group, t.ref_class, t.ref_confidence],
      [`year A (${data.year_a})`, t.a_group, t.a_class, t.a_confidence],
      [`year B (${data.year_b})`, t.b_group, t.b_class, t.b_confidence],
    ].filter((row) => row[1] !== undefined);
    const probs = Object.keys(t).filter((k) => /^[a-z]+_p_/.test(k) && typeof t[k] === "number");
    const other = ["transition", "newly_developed", "changed", "embedding_distance", "embedding_z",
                   "hotspot", "p_no_change", "significant", "water_share_a", "water_share_b",
                   "water_changed", "planted"]
      .filter((k) => k in t);
    const image = (which, year) => t.images[which]
      ? el("figure", {}, el("img", { class: "tile-image", alt: `tile ${tileId} in ${year}`,
                                      src: `${root}/tiles/${encodeURIComponent(tileId)}/${which}.png` }),
           el("figcaption", { text: String(year) }))
      : el("figure", {}, el("p", { class: "muted", text: `no image in ${year}` }));
    panel.replaceChildren(
      el("h2", { text: `Tile ${tileId}` }),
      el("div", { class: "tile-images" }, image("a", data.year_a), image("b", data.year_b)),
      table(groups.map(([map, group, klass, conf]) => ({ map, group, class: klass, confidence: conf })),
        ["map", "group", "class", "confidence"]),
      el("h2", { text: "Class probabilities" }),
      el("div", { class: "probs" }, probs.map((k) => el("div", { class: "prob-row" },
        el("span", { text: k.replace(/^([a-z]+)_p_/, (m, y) => `${y === "b" ? data.year_b : y === "a" ? data.year_a : y} `).replace("group_", "group ") }),
        el("span", { class: "bar" }, el("span", { style: `width:${Math.round(100 * t[k])}%` })),
        el("span", { text: t[k].toFixed(3) })))),
      table([Object.fromEntries(other.map((k) => [k, t[k]]))], other));
  }

  function renderAside(aside, root, data, files) {
    const s = data.summary;
    if (s.caveat) aside.append(el("p", { class: "caveat" }, el("strong", { text: "Caution: " }), s.caveat));
    const expected = (s.expected_from_model_error || {}).newly_developed;
    const error = expected ? `, about ${expected.expected} of them expected from model error alone ` +
      `(${Math.round(100 * expected.interval)}% interval ${expected.low}-${expected.high})` : "";
    aside.append(el("p", {}, el("strong", { text: `${fmt(s.newly_developed)} tiles newly developed${error}` }),
      ` of ${fmt(s.compared)} compared (${fmt(s.tiles)} tiles, ${fmt(s.uncertain)} uncertain, ` +
      `${fmt(s.changed)} changed). Reference: ${s.reference_choice || `${data.year_a} ${fmt(s.reference)}`}.`));
    const r = s.review;
    if (r) {
      const found = r.reviewed
        ? `${fmt(r.reviewed)} reviewed, ${fmt(r.confirmed)} confirmed as real change: precision ` +
          `${fmt(r.precision)} (95% interval ${fmt(r.precision_interval[0])}-${fmt(r.precision_interval[1])}); ` +
          `about ${fmt(r.estimated_real)} real (${fmt(r.estimated_real_interval[0])}-${fmt(r.estimated_real_interval[1])})`
        : "none reviewed yet";
      aside.append(el("p", {}, el("strong", { text: `Review (${r.status}): ` }),
        `of ${fmt(r.flagged)} flagged tiles, ${found}.`));
    }
    const model = s.model || {};
    if (model.split === "test") {
      aside.append(el("p", { text: `Model ${model.model_id} on its held-out test counties ` +
        `(${(model.test_counties || []).join(", ")}): accuracy ${fmt(model.accuracy)}, groups ` +
        `${fmt(model.group_accuracy)}; this county is in its ${model.county_part} part.` }));
    } else if (model.note) {
      aside.append(el("p", { class: "muted", text: `Model: ${model.note}.` }));
    }
    if (Array.isArray(s.counts) && s.counts.length) {
      aside.append(el("h2", { text: "Tiles per group" }), table(s.counts));
    }
    if (s.transitions && typeof s.transitions === "object") {
      const rows = Object.entries(s.transitions).map(([from, to]) => ({ [`${data.year_a} \\ ${data.year_b}`]: from, ...to }));
      if (rows.length) aside.append(el("h2", { text: "Transitions" }), table(rows));
    }
    // Figures: every PNG of the report that is not the plain image of one of its maps.
    const maps = new Set(files.filter((f) => f.endsWith(".tif")).map((f) => f.slice(0, -4)));
    const figures = files.filter((f) => f.endsWith(".png") && !maps.has(f.slice(0, -4)));
    figures.sort((a, b) => (a === "comparison.png" ? -1 : b === "comparison.png" ? 1 : a.localeCompare(b)));
    for (const f of figures) {
      aside.append(el("h2", { text: f.replace(/\.png$/, "").replace(/_/g, " ") }),
        el("img", { class: "figure", alt: f, src: `${root}/files/${encodeURIComponent(f)}` }));
    }
    for (const key of ["accuracy", "planted_change", "embedding_change", "change_test",
                       "expected_from_model_error"]) {
      if (s[key] && Object.keys(s[key]).length) {
        aside.append(el("h2", { text: key.replace(/_/g, " ") }), el("pre", { text: JSON.stringify(s[key], null, 1) }));
      }
    }
    const kinds = { ".tif": "Cloud-Optimized GeoTIFF", ".geojson": "GeoJSON", ".parquet": "Parquet",
                    ".md": "report", ".json": "summary", ".png": "image" };
    const order = [".md", ".tif", ".geojson", ".parquet", ".json", ".png"];
    const listed = [...files, "summary.json"].sort((a, b) =>
      order.indexOf(a.slice(a.lastIndexOf("."))) - order.indexOf(b.slice(b.lastIndexOf("."))) || a.localeCompare(b));
    aside.append(el("h2", { text: "Downloads" }), el("ul", { class: "downloads" }, listed.map((f) =>
      el("li", {}, el("a", { href: `${root}/files/${encodeURIComponent(f)}`, download: f, text: f }),
        ` (${kinds[f.slice(f.lastIndexOf("."))] || "file"})`))));
  }

  // --- review mode: answer the queue of a change report, tile by tile ---------------------
  // Reading uses the session cookie like every other page; writing sends the user's token in
  // an Authorization header, which the server requires (a cookie alone could come from a
  // cross-site form). The token comes from /api/token: the cookie itself may be HttpOnly.

  let pageToken = null;

  async function bearer(renew) {
    if (renew || !pageToken || Date.now() > pageToken.renewAt) {
      const t = await getJSON(`${api}/token`);
      pageToken = { value: t.token, renewAt: Date.now() + 0.8 * 1000 * t.expires_in };
    }
    return pageToken.value;
  }

  async function send(method, url, body) {
    for (const renew of [false, true]) {
      const response = await fetch(url, { method, credentials: "same-origin",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${await bearer(renew)}` },
        body: JSON.stringify(body) });
      if (response.status === 401 && !renew) continue;  // the token ran out: once more
      if (!response.ok) {
        let detail = response.statusText;
        try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
        throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
      }
      return response.json();
    }
  }

  const SHORTCUTS = [["1 or c", "real change"], ["2 or n", "no change"], ["3 or u", "can't tell"],
                     ["j / → / ↓", "next tile"], ["k / ← / ↑", "previous tile"],
                     ["a / A", "next / previous true class of year A"],
                     ["b / B", "next / previous true class of year B"], ["x", "clear both classes"]];
  const ANSWER_KEYS = { 1: "change", c: "change", 2: "no_change", n: "no_change", 3: "unsure", u: "unsure" };
  const PREFETCH = 4;  // tiles ahead whose images load while the analyst looks at this one

  async function reviewPage() {
    const root = `${api}/change/${enc(view.county, view.pair)}`;
    let data = await getJSON(`${root}/review`);
    let index = Math.max(0, data.queue.findIndex((t) => !t.answer));
    const classes = { a: null, b: null };
    const prefetched = new Map();

    const progress = el("p", { id: "review-progress", class: "review-progress" });
    const figures = el("p", { id: "review-figures", class: "muted" });
    const handoff = el("div", { id: "review-handoff" });
    const list = el("tbody");
    const panel = el("section", { id: "review-tile", class: "review-tile" });
    const status = el("p", { id: "review-status", class: "muted", role: "status" });
    main.replaceChildren(
      el("h1", { text: `Review: ${data.county} ${data.year_a} → ${data.year_b}` }),
      el("p", {}, el("a", { href: `${base}/change/${enc(view.county, view.pair)}`, text: "← the change report" }),
        ` · signed in as ${data.user}` + (data.can_write ? "" : " (read only: editing change_detection runs is needed to answer)")),
      progress, figures, handoff,
      el("div", { class: "review" },
        el("div", { class: "review-queue" }, el("table", { id: "review-queue" },
          el("thead", {}, el("tr", {}, ["#", "tile", "reason", `${data.year_a}`, `${data.year_b}`,
            "confidence", "p · distance", "your answer", "verdict"].map((c) => el("th", { text: c })))),
          list)),
        el("div", {}, panel, status,
          el("h2", { text: "Keyboard shortcuts" }),
          el("table", { class: "shortcuts" }, el("tbody", {}, SHORTCUTS.map(([k, what]) =>
            el("tr", {}, el("td", {}, el("kbd", { text: k })), el("td", { text: what }))))))));

    const answerText = Object.fromEntries(data.answers.map((a) => [a.value, a.text]));
    const call = (t, y) => [t[`${y}_class`], t[`${y}_group`] && t[`${y}_group`] !== t[`${y}_class`] ? `(${t[`${y}_group`]})` : null]
      .filter(Boolean).join(" ");
    // The no-change test's p-value and the embedding distance, where the report has them.
    const evidence = (t) => [["p", t.p_no_change], ["d", t.embedding_distance]]
      .filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
    const image = (t, which) => `${root}/tiles/${encodeURIComponent(t.tile_id)}/${which}.png`;

    function drawSummary() {
      const answered = data.queue.filter((t) => t.answer).length;
      progress.textContent = `${answered} / ${data.queue.length} answered`;
      const f = data.figures;
      const precision = f.precision === undefined ? "precision: none reviewed yet"
        : `precision ${fmt(f.precision)} (95 % interval ${fmt(f.precision_interval[0])}–${fmt(f.precision_interval[1])})`;
      figures.textContent = `Flagged ${f.flagged}, reviewed ${f.reviewed}, confirmed ${f.confirmed}, ` +
        `can't tell ${f.unsure}; ${precision}; ${f.users} analyst(s), ${f.answers} answers. ` +
        `${f.note.charAt(0).toUpperCase()}${f.note.slice(1)}.`;
    }

    function drawList() {
      list.replaceChildren(...data.queue.map((t, i) => el("tr", {
        class: i === index ? "selected" : "", "data-tile": t.tile_id, onclick: () => select(i) },
        el("td", { text: String(i + 1) }), el("td", { text: t.tile_id }), el("td", { text: t.reason_text }),
        el("td", { text: call(t, "a") }), el("td", { text: call(t, "b") }),
        el("td", { text: fmt(t.b_confidence) }), el("td", { text: evidence(t) }),
        el("td", { class: "answer", text: t.answer ? answerText[t.answer.answer] : "" }),
        el("td", { text: t.verdict ? answerText[t.verdict] || t.verdict : "" }))));
      const row = list.children[index];
      if (row) row.scrollIntoView({ block: "nearest" });
    }

    function drawHandoff() {
      handoff.replaceChildren();
      for (const task of data.waiting || []) {
        const done = el("button", { type: "button", class: "publish", text: "Done — publish the review",
          onclick: () => publish(task, done) });
        if (!data.can_write) done.disabled = true;
        handoff.append(el("p", { class: "decision" },
          `Airflow is waiting for this review: ${task.subject} (run ${task.run_id}, task ${task.task_id}). `, done));
      }
    }

    async function publish(task, button) {
      button.disabled = true;
      // Airflow's own REST API, beside this app (mounted one level below the server's root).
      const url = `${base.slice(0, base.lastIndexOf("/"))}/api/v2/dags/${enc(task.dag_id)}` +
        `/dagRuns/${enc(task.run_id)}/taskInstances/${enc(task.task_id)}/${task.map_index}/hitlDetails`;
      try {
        await send("PATCH", url, { chosen_options: [view.publish_option], params_input: {} });
        button.replaceWith(el("strong", { class: "published", text: "Sent: the DAG publishes the review." }));
      } catch (err) {
        button.disabled = false;
        status.textContent = `Could not hand the review back to Airflow: ${err.message}`;
      }
    }

    function classSelect(which, year) {
      const select = el("select", { id: `class-${which}`, onchange: () => {
        classes[which] = select.value || null; select.blur(); } },
        el("option", { value: "", text: `— true class ${year} —` }),
        data.classes.map((c) => el("option", { value: c, text: c })));
      select.value = classes[which] || "";
      return select;
    }

    function drawTile() {
      const t = data.queue[index];
      if (!t) { panel.replaceChildren(el("p", { class: "muted", text: "The queue is empty." })); return; }
      const figure = (which, year) => el("figure", {},
        el("img", { class: "review-image", id: `review-image-${which}`, alt: `tile ${t.tile_id} in ${year}`, src: image(t, which) }),
        el("figcaption", {}, el("strong", { text: String(year) }), ` ${call(t, which)}`,
          t[`${which}_confidence`] !== undefined ? ` · ${fmt(t[`${which}_confidence`])}` : ""));
      panel.replaceChildren(
        el("h2", { text: `Tile ${index + 1} of ${data.queue.length}: ${t.tile_id}` }),
        el("p", { class: "muted", text: `Asked because: ${t.reason_text}` +
          (evidence(t) ? ` (${evidence(t)})` : "") + (t.transition ? `; model: ${t.transition}` : "") }),
        el("div", { class: "review-images" }, figure("a", data.year_a), figure("b", data.year_b)),
        el("div", { class: "review-classes" }, classSelect("a", data.year_a), classSelect("b", data.year_b)),
        el("div", { class: "review-answers" }, data.answers.map((a, i) => el("button", {
          type: "button", "data-answer": a.value, "aria-pressed": String(!!t.answer && t.answer.answer === a.value),
          disabled: data.can_write ? null : "disabled", onclick: () => answer(a.value) },
          el("kbd", { text: String(i + 1) }), ` ${a.text}`))),
        el("p", { class: "muted", text: t.answer ? `Your answer: ${answerText[t.answer.answer]}` +
          (t.verdict ? `; verdict of all analysts: ${answerText[t.verdict] || t.verdict}` : "") : "Not answered yet." }));
      for (const ahead of data.queue.slice(index + 1, index + 1 + PREFETCH)) {
        for (const which of ["a", "b"]) {
          const src = image(ahead, which);
          if (!prefetched.has(src)) { const img = new Image(); img.src = src; prefetched.set(src, img); }
        }
      }
    }

    function select(i) {
      if (i < 0 || i >= data.queue.length) return;
      index = i;
      const t = data.queue[index];
      classes.a = t.answer ? t.answer.class_a : null;
      classes.b = t.answer ? t.answer.class_b : null;
      drawList();
      drawTile();
    }

    async function answer(value) {
      if (!data.can_write) { status.textContent = "You may read this review but not answer it."; return; }
      const t = data.queue[index];
      const body = { tile_id: t.tile_id, answer: value, class_a: classes.a, class_b: classes.b };
      status.textContent = "Saving…";
      try {
        const stored = await send("POST", `${root}/reviews`, body);
        t.answer = stored;
        status.textContent = `Saved: ${t.tile_id} ${answerText[value]}.`;
      } catch (err) {
        status.textContent = `Not saved: ${err.message}`;
        return;
      }
      const next = data.queue.findIndex((q, i) => i > index && !q.answer);
      const later = next >= 0 ? next : data.queue.findIndex((q) => !q.answer);
      select(later >= 0 ? later : Math.min(index + 1, data.queue.length - 1));
      refresh();
    }

    async function refresh() {
      // The verdicts and figures count every analyst's answers: the server recomputes them.
      try {
        const fresh = await getJSON(`${root}/review`);
        const byId = new Map(fresh.queue.map((t) => [t.tile_id, t]));
        for (const t of data.queue) {
          const f = byId.get(t.tile_id);
          if (f) { t.verdict = f.verdict; t.answer = f.answer || t.answer; }
        }
        data = { ...fresh, queue: data.queue };
        drawSummary(); drawList(); drawHandoff();
      } catch (err) { status.textContent = `Could not refresh the figures: ${err.message}`; }
    }

    function cycle(which, step) {
      const options = [null, ...data.classes];
      const at = options.indexOf(classes[which]);
      classes[which] = options[(at + step + options.length) % options.length];
      const select = document.getElementById(`class-${which}`);
      if (select) select.value = classes[which] || "";
    }

    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (["SELECT", "INPUT", "TEXTAREA"].includes(event.target.tagName)) return;
      const key = event.key;
      if (ANSWER_KEYS[key]) answer(ANSWER_KEYS[key]);
      else if (["j", "ArrowDown", "ArrowRight"].includes(key)) select(index + 1);
      else if (["k", "ArrowUp", "ArrowLeft"].includes(key)) select(index - 1);
      else if (key === "a" || key === "A") cycle("a", key === "a" ? 1 : -1);
      else if (key === "b" || key === "B") cycle("b", key === "b" ? 1 : -1);
      else if (key === "x") { classes.a = null; classes.b = null; drawTile(); }
      else return;
      event.preventDefault();
    });

    drawSummary();
    drawHandoff();
    select(index);
  }

  const pages = { index: indexPage, run: runPage, review: reviewPage,
                  change: () => renderReport(main, view.county, view.pair) };
  (pages[view.page] || indexPage)().catch((err) => fail(main, err));
})();
