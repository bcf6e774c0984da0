// leukoscope review station: one plain ES module, no dependencies, no build step.
// Every change goes through the public API (PUT /specimens/{id}/cells/..., POST
// /specimens/{id}/verify) with the session cookie and the page's CSRF token.

const KEYS = { "1": "benign", "2": "early_pre_b", "3": "pre_b", "4": "pro_b", "u": "unidentified" };
const LABELS = {
  benign: "Benign", early_pre_b: "Early pre-B", pre_b: "Pre-B", pro_b: "Pro-B",
  unidentified: "Unidentified",
};
const SVG = "http://www.w3.org/2000/svg";

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function api(method, url, body) {
  const headers = { "X-CSRF-Token": csrf(), "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail : response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

function say(text, kind = "") {
  const box = document.getElementById("message");
  if (!box) return;
  box.textContent = text;
  box.className = "message " + kind;
}

// --- frame view: the image with every cell outlined and labelled, zoom and pan ----------
// Results and images never change once stored: keep the last few (the live view redraws
// every few seconds and would otherwise fetch, and audit, the same frames again and again).
const frames = new Map();
const KEEP_FRAMES = 64;

async function loadFrame(frameId) {
  if (frames.has(frameId)) return frames.get(frameId);
  const [result, image] = await Promise.all([
    api("GET", `/frames/${encodeURIComponent(frameId)}`),
    fetch(`/frames/${encodeURIComponent(frameId)}/image`, { credentials: "same-origin" }),
  ]);
  if (!image.ok) throw new Error(`image: ${image.status}`);
  const loaded = {
    result,
    width: Number(image.headers.get("X-Image-Width")),
    height: Number(image.headers.get("X-Image-Height")),
    url: URL.createObjectURL(await image.blob()),
  };
  frames.set(frameId, loaded);
  if (frames.size > KEEP_FRAMES) {
    const [oldest, entry] = frames.entries().next().value;
    frames.delete(oldest);
    URL.revokeObjectURL(entry.url);
  }
  return loaded;
}

async function drawFrame(svg, frameId, options = {}) {
  const { result, width, height, url } = await loadFrame(frameId);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const img = document.createElementNS(SVG, "image");
  img.setAttribute("href", url);
  img.setAttribute("width", width);
  img.setAttribute("height", height);
  svg.appendChild(img);
  const stroke = Math.max(1, Math.round(Math.max(width, height) / 400));
  result.cells.forEach((cell, index) => {
    const [x, y, w, h] = cell.bbox;
    const current = (options.classOf && options.classOf(frameId, index)) || cell.class;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", x); rect.setAttribute("y", y);
    rect.setAttribute("width", w); rect.setAttribute("height", h);
    rect.setAttribute("stroke-width", index === options.highlight ? stroke * 3 : stroke);
    rect.setAttribute("class", `outline ${current}${index === options.highlight ? " highlight" : ""}`);
    svg.appendChild(rect);
    if (options.labels !== false) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", x);
      text.setAttribute("y", Math.max(10, y - 3));
      text.setAttribute("font-size", Math.max(8, Math.round(Math.max(width, height) / 60)));
      text.setAttribute("class", `label ${current}`);
      text.textContent = `${index} ${LABELS[current] || current}`;
      svg.appendChild(text);
    }
  });
  return { width, height };
}

function zoomable(svg, size) {
  let box = { x: 0, y: 0, w: size.width, h: size.height };
  const apply = () => svg.setAttribute("viewBox", `${box.x} ${box.y} ${box.w} ${box.h}`);
  svg.onwheel = (event) => {
    event.preventDefault();
    const rect = svg.getBoundingClientRect();
    const fx = (event.clientX - rect.left) / rect.width;
    const fy = (event.clientY - rect.top) / rect.height;
    const factor = event.deltaY < 0 ? 0.8 : 1.25;
    const w = Math.min(size.width * 4, Math.max(size.width / 20, box.w * factor));
    const h = box.h * (w / box.w);
    box = { x: box.x + (box.w - w) * fx, y: box.y + (box.h - h) * fy, w, h };
    apply();
  };
  let drag = null;
  svg.onpointerdown = (event) => {
    drag = { x: event.clientX, y: event.clientY, box: { ...box } };
    svg.setPointerCapture(event.pointerId);
  };
  svg.onpointermove = (event) => {
    if (!drag) return;
    const rect = svg.getBoundingClientRect();
    const scale = box.w / rect.width;
    box.x = drag.box.x - (event.clientX - drag.x) * scale;
    box.y = drag.box.y - (event.clientY - drag.y) * scale;
    apply();
  };
  svg.onpointerup = () => { drag = null; };
}

// --- the specimen review page ------------------------------------------------------------
function reviewPage() {
  const root = document.getElementById("review");
  const specimen = root.dataset.specimen;
  const canReview = root.dataset.canReview === "true";
  const tiles = Array.from(document.querySelectorAll("#gallery .cell"));
  const dialog = document.getElementById("frame-dialog");
  let selected = 0;
  let cam = false;

  const classOf = (frame, index) => {
    const tile = tiles.find((t) => t.dataset.frame === frame && Number(t.dataset.index) === index);
    return tile ? tile.dataset.class : null;
  };

  function select(i, focus = true) {
    if (!tiles.length) return;
    selected = Math.max(0, Math.min(tiles.length - 1, i));
    tiles.forEach((t) => t.classList.remove("selected"));
    const tile = tiles[selected];
    tile.classList.add("selected");
    if (focus) tile.focus({ preventScroll: true });
    tile.scrollIntoView({ block: "nearest" });
  }

  function vertical(step) {
    const here = tiles[selected].getBoundingClientRect();
    let best = null;
    let bestScore = Infinity;
    tiles.forEach((tile, i) => {
      const r = tile.getBoundingClientRect();
      const dy = (r.top - here.top) * step;
      if (dy <= 1) return;
      const score = dy * 10 + Math.abs(r.left - here.left);
      if (score < bestScore) { bestScore = score; best = i; }
    });
    if (best !== null) select(best);
  }

  function updateSummary() {
    const total = tiles.length;
    const reviewed = tiles.filter((t) => t.classList.contains("reviewed")).length;
    const flagged = tiles.filter((t) => t.classList.contains("flagged") && t.classList.contains("reviewed")).length;
    document.getElementById("reviewed-count").textContent = reviewed;
    document.getElementById("flagged-reviewed").textContent = flagged;
    document.getElementById("progress-bar").setAttribute("width", total ? (200 * reviewed / total).toFixed(1) : 0);
    const counts = {};
    tiles.forEach((t) => { counts[t.dataset.class] = (counts[t.dataset.class] || 0) + 1; });
    document.querySelectorAll("[data-after-text]").forEach((text) => {
      const code = text.dataset.afterText;
      const before = text.textContent.split(" → ")[0];
      text.textContent = `${before} → ${counts[code] || 0}`;
    });
    const blasts = ["early_pre_b", "pre_b", "pro_b"].reduce((n, c) => n + (counts[c] || 0), 0);
    const known = blasts + (counts.benign || 0);
    document.getElementById("blast-after").textContent = known ? `${(100 * blasts / known).toFixed(1)} %` : "–";
  }

  async function classify(code) {
    if (!canReview) { say("Read-only: this specimen cannot be changed with your key or in its state.", "error"); return; }
    const tile = tiles[selected];
    if (!tile) return;
    const url = `/specimens/${encodeURIComponent(specimen)}/cells/${encodeURIComponent(tile.dataset.frame)}/${tile.dataset.index}`;
    try {
      const answer = await api("PUT", url, { class: code });
      tile.classList.remove(tile.dataset.class);
      tile.dataset.class = answer.after;
      tile.classList.add(answer.after, "reviewed");
      tile.classList.toggle("changed", answer.after !== answer.model);
      tile.querySelector(".now").textContent = LABELS[answer.after] || answer.after;
      say(answer.before === answer.after ? `Accepted ${LABELS[answer.after]}.` : `${LABELS[answer.before]} → ${LABELS[answer.after]}.`, "ok");
      updateSummary();
      select(selected + 1);
    } catch (error) {
      say(`Not saved: ${error.message}`, "error");
    }
  }

  const openFrame = (tile) => showFrame(tile.dataset.frame, Number(tile.dataset.index));

  async function showFrame(frame, index) {
    const cell = index >= 0 ? ` · cell ${index}` : "";
    document.getElementById("frame-title").textContent = `frame ${frame.slice(0, 12)}${cell}`;
    dialog.showModal();
    const svg = document.getElementById("frame-view");
    try {
      const size = await drawFrame(svg, frame, { highlight: index, classOf });
      zoomable(svg, size);
    } catch (error) {
      svg.replaceChildren();
      say(`Frame not available: ${error.message}`, "error");
    }
  }

  function toggleCam(on) {
    cam = on;
    document.getElementById("cam-toggle").checked = on;
    tiles.forEach((tile) => {
      const img = tile.querySelector("img");
      if (!img.dataset.crop) img.dataset.crop = img.getAttribute("src");
      img.setAttribute("src", on ? img.dataset.cam : img.dataset.crop);
    });
  }

  tiles.forEach((tile, i) => {
    tile.addEventListener("click", () => { select(i); openFrame(tile); });
  });
  document.querySelectorAll(".frame-flag").forEach((button) => {
    button.addEventListener("click", () => showFrame(button.dataset.frame, -1));
  });
  document.getElementById("frame-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => select(selected));
  document.getElementById("cam-toggle").addEventListener("change", (e) => toggleCam(e.target.checked));

  const sign = document.getElementById("sign");
  if (sign) {
    sign.addEventListener("click", async () => {
      sign.disabled = true;
      try {
        const answer = await api("POST", `/specimens/${encodeURIComponent(specimen)}/verify`);
        say(answer.outcome === "verified" ? "Verified: the reports are final." : "Signed: a second reviewer must sign.", "ok");
        window.location.reload();
      } catch (error) {
        say(`Not signed: ${error.message}`, "error");
        sign.disabled = false;
      }
    });
  }

  document.addEventListener("keydown", (event) => {
    if (dialog.open || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    const key = event.key.toLowerCase();
    if (KEYS[key]) { event.preventDefault(); classify(KEYS[key]); }
    else if (event.key === "Enter") { event.preventDefault(); if (tiles[selected]) classify(tiles[selected].dataset.class); }
    else if (event.key === "ArrowRight") { event.preventDefault(); select(selected + 1); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); select(selected - 1); }
    else if (event.key === "ArrowDown") { event.preventDefault(); vertical(1); }
    else if (event.key === "ArrowUp") { event.preventDefault(); vertical(-1); }
    else if (key === "c") { event.preventDefault(); toggleCam(!cam); }
    else if (key === "f") { event.preventDefault(); if (tiles[selected]) openFrame(tiles[selected]); }
  });
  select(0, false);
  document.getElementById("gallery").focus({ preventScroll: true });
}

function framePage() {
  const svg = document.getElementById("frame-view");
  drawFrame(svg, svg.dataset.frame).then((size) => zoomable(svg, size)).catch((error) => {
    svg.insertAdjacentText("afterend", `Frame not available: ${error.message}`);
  });
}

function rigsPage() {
  const draw = () => document.querySelectorAll("#rigs svg.thumb").forEach((svg) => {
    drawFrame(svg, svg.dataset.frame, { labels: false }).catch(() => svg.classList.add("missing"));
  });
  draw();
  setInterval(async () => {
    try {
      const response = await fetch("/ui/rigs?partial=1", { credentials: "same-origin" });
      if (!response.ok) return;
      document.getElementById("rigs").innerHTML = await response.text();
      draw();
    } catch { /* the next tick tries again */ }
  }, 3000);
}

const pages = { review: reviewPage, frame: framePage, rigs: rigsPage };
const start = pages[document.body.dataset.page];
if (start) start();
