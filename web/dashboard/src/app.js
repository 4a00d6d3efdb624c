// The dashboard's page: a job list kept live by the server's event stream, a page per job, a comparison.
// The server picks every number (finetune_dashboard/views.py); this file only lays them out and draws.
import {
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  LogarithmicScale,
  PointElement,
  Title,
  Tooltip,
} from "chart.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, LogarithmicScale, Legend, Title, Tooltip);

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const main = document.getElementById("main");
let jobs = [];
let charts = [];
let current = null; // {kind: "job"|"compare", keys: [...], versions: {...}}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits);
  return String(v);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function age(timestamp) {
  return timestamp ? duration((Date.now() - Date.parse(timestamp)) / 1000) : "–";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function phaseBadge(phase) {
  return el("span", { class: `phase phase-${phase}` }, phase);
}

function progressBar(percent) {
  const p = percent ?? 0;
  const fill = el("div", { class: "bar-fill" });
  fill.style.width = `${Math.min(100, p)}%`; // CSSOM, which the page's Content-Security-Policy allows
  return el(
    "div",
    { class: "bar", title: `${fmt(p, 3)}%` },
    fill,
    el("span", {}, percent === null || percent === undefined ? "–" : `${p.toFixed(1)}%`),
  );
}

function destroyCharts() {
  for (const c of charts) c.destroy();
  charts = [];
  pending = [];
}

// One line chart; `series` is [{label, points: [[step, value]...]}]. Chart.js needs the canvas in the
// page to size it, so the chart is made by mountCharts() once the view is in place. The canvas carries
// the number of points per label in data-points and the last point in data-last, so a test reads what
// was drawn.
let pending = [];

function lineChart(id, title, series, { log = false } = {}) {
  const canvas = el("canvas", { id });
  pending.push(() => {
    const chart = new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        interaction: { mode: "nearest", intersect: false },
        plugins: { title: { display: true, text: title }, legend: { display: true, position: "bottom" } },
        scales: {
          x: { type: "linear", title: { display: true, text: "step" } },
          y: { type: log ? "logarithmic" : "linear" },
          // A series with axis "y1" (a quantity of another size) gets its own scale on the right.
          y1: { type: "linear", position: "right", display: "auto", grid: { drawOnChartArea: false } },
        },
      },
    });
    charts.push(chart);
    setSeries(chart, series);
  });
  return el("div", { class: "chart" }, canvas);
}

function mountCharts() {
  for (const make of pending) make();
  pending = [];
}

function setSeries(chart, series) {
  chart.data.datasets = series.map((s, i) => ({
    label: s.label,
    data: s.points.map(([x, y]) => ({ x, y })),
    borderColor: s.colour ?? COLOURS[i % COLOURS.length],
    backgroundColor: s.colour ?? COLOURS[i % COLOURS.length],
    yAxisID: s.axis ?? "y",
    pointRadius: s.points.length > 60 ? 0 : 2,
    borderWidth: 2,
    tension: 0,
  }));
  chart.update("none");
  chart.canvas.dataset.points = JSON.stringify(Object.fromEntries(series.map((s) => [s.label, s.points.length])));
  chart.canvas.dataset.last = JSON.stringify(Object.fromEntries(series.map((s) => [s.label, s.points.at(-1) ?? null])));
}

function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

function keyValues(obj) {
  const entries = Object.entries(obj ?? {});
  if (!entries.length) return el("p", { class: "muted" }, "none");
  return el("dl", {}, entries.map(([k, v]) => [el("dt", {}, k), el("dd", {}, fmt(v))]));
}

// ---- the job list ----

function renderList() {
  destroyCharts();
  current = null;
  const selected = new Set();
  const compare = el("button", { id: "compare", disabled: "" }, "Compare selected");
  compare.addEventListener("click", () => {
    location.hash = `#/compare/${[...selected].map(encodeURIComponent).join(",")}`;
  });
  const body = el("tbody", { id: "jobs-body" });
  const view = el(
    "section",
    {},
    el("div", { class: "toolbar" }, el("h1", {}, "Fine-tune jobs"), compare),
    el(
      "table",
      { id: "jobs" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ["", "Namespace", "Name", "Phase", "Progress", "Step", "Loss", "ETA", "Task", "Method", "Nodes×GPUs", "Age"].map(
            (h) => el("th", {}, h),
          ),
        ),
      ),
      body,
    ),
    el("p", { class: "muted", id: "empty" }, ""),
  );
  main.replaceChildren(view);
  const fill = () => {
    body.replaceChildren(
      ...jobs.map((j) => {
        const box = el("input", { type: "checkbox", "aria-label": `select ${j.key}` });
        box.checked = selected.has(j.key);
        box.addEventListener("change", () => {
          if (box.checked) selected.add(j.key);
          else selected.delete(j.key);
          compare.disabled = selected.size < 2;
        });
        return el(
          "tr",
          { "data-key": j.key, "data-phase": j.phase, "data-step": j.step ?? "" },
          el("td", {}, box),
          el("td", {}, j.namespace),
          el("td", {}, el("a", { href: `#/job/${j.namespace}/${j.name}` }, j.name)),
          el("td", {}, phaseBadge(j.phase)),
          el("td", {}, progressBar(j.percent)),
          el("td", {}, j.totalSteps ? `${fmt(j.step)}/${j.totalSteps}` : fmt(j.step)),
          el("td", {}, fmt(j.loss)),
          el("td", {}, duration(j.etaSeconds)),
          el("td", {}, fmt(j.task)),
          el("td", {}, fmt(j.method)),
          el("td", {}, j.topology),
          el("td", {}, age(j.created)),
        );
      }),
    );
    view.querySelector("#empty").textContent = jobs.length ? "" : "No FineTuneJobs in the watched namespaces.";
  };
  fill();
  return fill;
}

// ---- one job ----

async function fetchJob(key) {
  const r = await fetch(`api/jobs/${key}`);
  if (!r.ok) throw new Error(await r.text());
  return r.json();
}

function curveSeries(curves, names) {
  return names.filter((n) => curves[n]).map((n) => ({ label: n, points: curves[n] }));
}

function memoryCard(m) {
  if (!m) return el("p", { class: "muted" }, "no estimate");
  const per = m.perGpu ?? {};
  return el(
    "div",
    {},
    el("p", {}, el("strong", {}, m.verdict), " ", m.message ?? ""),
    keyValues({
      "GPU memory": bytes(m.gpuMemoryBytes),
      weights: bytes(per.weights),
      gradients: bytes(per.gradients),
      "optimizer states": bytes(per.optimizerStates),
      activations: bytes(per.activations),
      overhead: bytes(per.overhead),
      "total per GPU": bytes(per.total),
    }),
  );
}

function metricNames(d) {
  return Object.keys(d.curves).filter((n) => n.startsWith("eval_") && n !== "eval_loss");
}

// The parts of a job's page that are text: redrawn whole on each change (the charts are updated in place).
function jobHeader(d) {
  return [
    el("div", { class: "toolbar" }, el("h1", {}, d.name), phaseBadge(d.phase), el("span", { class: "muted" }, d.namespace)),
    el("p", { id: "message" }, d.message),
    el(
      "div",
      { class: "cards" },
      el(
        "div",
        { class: "card", id: "progress" },
        el("h2", {}, "Progress"),
        progressBar(d.percent),
        keyValues({
          step: d.totalSteps ? `${d.step}/${d.totalSteps}` : d.step,
          epoch: d.progress.epoch,
          loss: d.loss,
          "learning rate": d.progress.learningRate,
          "samples/s": d.progress.samplesPerSecond,
          ETA: duration(d.etaSeconds),
          restarts: d.restarts,
        }),
      ),
      el(
        "div",
        { class: "card", id: "topology" },
        el("h2", {}, "Topology"),
        keyValues({
          "nodes×GPUs": d.topology,
          strategy: d.strategy,
          cpu: d.resources.cpu,
          memory: d.resources.memory,
          "trainable params": d.parameters?.trainable,
          "total params": d.parameters?.total,
        }),
      ),
      el("div", { class: "card", id: "estimate" }, el("h2", {}, "Memory estimate"), memoryCard(d.memoryEstimate)),
      el(
        "div",
        { class: "card", id: "artifacts" },
        el("h2", {}, "Artifacts"),
        keyValues(d.artifacts),
        el("h2", {}, "Metrics"),
        keyValues({ ...d.metrics, ...d.testMetrics }),
      ),
    ),
  ];
}

function jobDetails(d) {
  return [
    el("h2", {}, "Conditions"),
    table(
      ["Type", "Status", "Reason", "Message", "Since"],
      d.conditions.map((c) =>
        el(
          "tr",
          {},
          el("td", {}, c.type),
          el("td", {}, c.status),
          el("td", {}, c.reason),
          el("td", {}, c.message),
          el("td", {}, age(c.lastTransitionTime)),
        ),
      ),
      { id: "conditions" },
    ),
    el("h2", {}, "Events"),
    table(
      ["Type", "Reason", "Message", "Count", "Last"],
      d.events.map((e) =>
        el(
          "tr",
          {},
          el("td", {}, e.type),
          el("td", {}, e.reason),
          el("td", {}, e.message),
          el("td", {}, e.count),
          el("td", {}, age(e.last)),
        ),
      ),
      { id: "events" },
    ),
    el("h2", {}, "Settings"),
    keyValues(d.hyperparameters),
  ];
}

function jobSeries(d) {
  return [
    curveSeries(d.curves, ["train_loss", "eval_loss"]),
    curveSeries(d.curves, ["learning_rate"]),
    curveSeries(d.curves, ["tokens_per_second", "samples_per_second"]).map((s) =>
      s.label === "samples_per_second" ? { ...s, axis: "y1" } : s,
    ),
    curveSeries(d.curves, metricNames(d)),
  ];
}

async function renderJob(key) {
  destroyCharts();
  const d = await fetchJob(key);
  current = { kind: "job", keys: [key], versions: { [key]: d.resourceVersion } };
  const logBox = el("pre", { id: "log", class: "log" }, "");
  const loadLog = async () => {
    const r = await fetch(`api/jobs/${key}/log?rank=0`);
    logBox.textContent = await r.text();
  };
  const [loss, lr, throughput, metrics] = jobSeries(d);
  main.replaceChildren(
    el(
      "section",
      { id: "job", "data-key": key },
      el("p", {}, el("a", { href: "#/" }, "← all jobs")),
      el("div", { id: "job-header" }, jobHeader(d)),
      el(
        "div",
        { class: "charts" },
        lineChart("chart-loss", "Loss", loss),
        lineChart("chart-lr", "Learning rate", lr),
        lineChart("chart-throughput", "Throughput", throughput),
        lineChart("chart-metrics", "Eval metrics", metrics),
      ),
      el("div", { id: "job-details" }, jobDetails(d)),
      el("h2", {}, "Trainer log (rank 0) ", el("button", { onclick: loadLog }, "load")),
      logBox,
    ),
  );
  mountCharts();
}

async function refreshJob(key) {
  const d = await fetchJob(key);
  if (!current || current.kind !== "job" || current.keys[0] !== key) return;
  current.versions[key] = d.resourceVersion;
  jobSeries(d).forEach((series, i) => setSeries(charts[i], series));
  document.getElementById("job-header").replaceChildren(...jobHeader(d));
  document.getElementById("job-details").replaceChildren(...jobDetails(d));
}

// ---- comparison ----

async function renderCompare(keys) {
  destroyCharts();
  const details = await Promise.all(keys.map(fetchJob));
  current = { kind: "compare", keys, versions: Object.fromEntries(details.map((d) => [d.key, d.resourceVersion])) };
  const overlay = (name) =>
    details.filter((d) => d.curves[name]).map((d, i) => ({ label: d.key, points: d.curves[name], colour: COLOURS[i % COLOURS.length] }));
  const settings = [...new Set(details.flatMap((d) => Object.keys(d.hyperparameters)))].sort();
  const differing = settings.filter((s) => new Set(details.map((d) => JSON.stringify(d.hyperparameters[s]))).size > 1);
  const metrics = [...new Set(details.flatMap((d) => Object.keys(d.metrics)))].sort();
  main.replaceChildren(
    el(
      "section",
      { id: "compare-view" },
      el("p", {}, el("a", { href: "#/" }, "← all jobs")),
      el("h1", {}, `Comparing ${keys.length} runs`),
      el(
        "div",
        { class: "charts" },
        lineChart("chart-compare-train", "Training loss", overlay("train_loss")),
        lineChart("chart-compare-eval", "Eval loss", overlay("eval_loss")),
      ),
      el("h2", {}, "Settings that differ"),
      table(
        ["Setting", ...details.map((d) => d.key)],
        differing.map((s) => el("tr", {}, el("td", {}, s), details.map((d) => el("td", {}, fmt(d.hyperparameters[s]))))),
        { id: "differing" },
      ),
      el("h2", {}, "Final metrics"),
      table(
        ["Metric", ...details.map((d) => d.key)],
        [
          el("tr", {}, el("td", {}, "phase"), details.map((d) => el("td", {}, d.phase))),
          ...metrics.map((m) => el("tr", {}, el("td", {}, m), details.map((d) => el("td", {}, fmt(d.metrics[m]))))),
        ],
        { id: "final-metrics" },
      ),
    ),
  );
  mountCharts();
}

// ---- routing and the live stream ----

let refillList = null;

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  refillList = null;
  try {
    if (parts[0] === "job" && parts.length >= 3) await renderJob(`${parts[1]}/${parts[2]}`);
    else if (parts[0] === "compare" && parts[1]) await renderCompare(parts.slice(1).join("/").split(",").map(decodeURIComponent));
    else refillList = renderList();
  } catch (err) {
    main.replaceChildren(el("p", { class: "error" }, String(err.message ?? err)), el("a", { href: "#/" }, "← all jobs"));
  }
}

function onJobs(list) {
  jobs = list;
  if (refillList) refillList();
  if (!current) return;
  const changed = current.keys.some((k) => {
    const j = jobs.find((x) => x.key === k);
    return j && j.resourceVersion !== current.versions[k];
  });
  if (!changed) return;
  if (current.kind === "job") refreshJob(current.keys[0]).catch(() => {});
  else renderCompare(current.keys).catch(() => {});
}

const source = new EventSource("api/stream");
source.addEventListener("jobs", (e) => onJobs(JSON.parse(e.data)));
source.addEventListener("open", () => document.body.classList.remove("offline"));
source.addEventListener("error", () => document.body.classList.add("offline"));
window.addEventListener("hashchange", route);
route();
