// A task's trace as a waterfall: the span tree of GET /tasks/{id}/trace (the data
// `orchestrator trace` prints) on a time axis, one colour per service; hovering a
// bar shows its GenAI token attributes, clicking it shows every attribute.
import { api, errorLine, h, number } from "./lib.js";

const COLOURS = 8;

// Spans in tree order (each parent before its children, siblings by start), with depth.
export function treeOrder(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parent_span_id && ids.has(span.parent_span_id)) {
      if (!children.has(span.parent_span_id)) children.set(span.parent_span_id, []);
      children.get(span.parent_span_id).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => a.start_unix_nano - b.start_unix_nano;
  const ordered = [];
  const stack = roots.sort(byStart).reverse().map((span) => [span, 0]);
  while (stack.length) {
    const [span, depth] = stack.pop();
    ordered.push([span, depth]);
    const kids = (children.get(span.span_id) ?? []).sort(byStart);
    for (let i = kids.length - 1; i >= 0; i -= 1) stack.push([kids[i], depth + 1]);
  }
  return ordered;
}

function genAi(span) {
  return Object.entries(span.attributes ?? {}).filter(([key]) => key.startsWith("gen_ai."));
}

function hoverText(span) {
  const lines = [`${span.service} · ${span.name}`, `${span.duration_ms.toFixed(1)} ms${span.instance ? ` on ${span.instance}` : ""}`];
  for (const [key, value] of genAi(span)) lines.push(`${key} = ${value}`);
  if (span.status === "error") lines.push(`error: ${span.status_message ?? ""}`);
  return lines.join("\n");
}

function detail(span) {
  const rows = [
    ["service", span.service],
    ["instance", span.instance ?? "–"],
    ["name", span.name],
    ["kind", span.kind],
    ["duration", `${span.duration_ms.toFixed(2)} ms`],
    ["status", span.status + (span.status_message ? `: ${span.status_message}` : "")],
    ["span id", span.span_id],
    ["parent", span.parent_span_id ?? "–"],
    ...Object.entries(span.attributes ?? {}).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
  ];
  return h(
    "table",
    { class: "grid attributes" },
    h("tbody", {}, rows.map(([k, v]) => h("tr", { class: k.startsWith("gen_ai.") ? "genai" : "" }, h("th", {}, k), h("td", { class: "mono" }, v)))),
  );
}

function waterfall(trace, panel) {
  const spans = trace.spans;
  const services = [...new Set(spans.map((s) => s.service))].sort();
  const colour = new Map(services.map((s, i) => [s, `svc-${i % COLOURS}`]));
  const t0 = Math.min(...spans.map((s) => s.start_unix_nano));
  const t1 = Math.max(...spans.map((s) => s.end_unix_nano));
  const total = Math.max(t1 - t0, 1);
  const totalMs = total / 1e6;

  const axis = h("div", { class: "axis" });
  for (let i = 0; i <= 4; i += 1) {
    const tick = h("span", { class: "tick" }, `${((totalMs * i) / 4).toFixed(0)} ms`);
    tick.style.left = `${i * 25}%`;
    axis.append(tick);
  }
  const rows = document.createDocumentFragment();
  for (const [span, depth] of treeOrder(spans)) {
    const bar = h("div", { class: `bar ${colour.get(span.service)}${span.status === "error" ? " failed" : ""}` });
    bar.style.left = `${((span.start_unix_nano - t0) / total) * 100}%`;
    bar.style.width = `${Math.max(((span.end_unix_nano - span.start_unix_nano) / total) * 100, 0.15)}%`;
    const label = h("div", { class: "label" }, h("span", { class: `dot ${colour.get(span.service)}` }), `${span.service} `, h("strong", {}, span.name));
    label.style.paddingLeft = `${depth * 14 + 4}px`;
    const tokensUsed = span.attributes?.["gen_ai.usage.input_tokens"];
    const row = h(
      "div",
      { class: "span-row", "data-span-id": span.span_id, "data-service": span.service, title: hoverText(span), tabindex: 0 },
      label,
      h("div", { class: "track" }, bar),
      h("div", { class: "ms num" }, `${span.duration_ms.toFixed(1)} ms`, tokensUsed !== undefined ? h("span", { class: "muted" }, ` · ${number(tokensUsed)} in`) : null),
    );
    const select = () => {
      for (const other of document.querySelectorAll(".span-row.selected")) other.classList.remove("selected");
      row.classList.add("selected");
      panel.replaceChildren(h("h3", {}, `${span.service} · ${span.name}`), detail(span));
    };
    row.addEventListener("click", select);
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") select();
    });
    rows.append(row);
  }
  const legend = h(
    "div",
    { class: "legend" },
    services.map((s) => h("span", { class: "legend-item" }, h("span", { class: `dot ${colour.get(s)}` }), s)),
  );
  return h(
    "div",
    {},
    legend,
    h("div", { id: "waterfall", class: "waterfall" }, h("div", { class: "span-row head" }, h("div", { class: "label" }, "span"), axis, h("div", { class: "ms" }, "duration")), rows),
  );
}

export function traceView(main, taskId) {
  const controller = new AbortController();
  const body = h("div", {}, h("p", { class: "muted" }, "Reading the trace…"));
  const panel = h("div", { id: "span-detail", class: "span-detail" }, h("p", { class: "muted" }, "Click a span to see all its attributes."));
  const summary = h("p", { id: "trace-summary", class: "muted" });
  const reload = h("button", { type: "button", id: "reload-trace" }, "Reload");
  const load = async (wait) => {
    try {
      const trace = await api(`/tasks/${encodeURIComponent(taskId)}/trace?wait=${wait}`, { signal: controller.signal });
      summary.textContent =
        `${number(trace.spans.length)} spans from ${trace.services.join(", ")}; ` +
        (trace.complete ? "complete." : `not complete yet (expected: ${trace.expected_services.join(", ")}).`);
      body.replaceChildren(trace.spans.length ? waterfall(trace, panel) : h("p", { class: "muted" }, "No spans yet."));
    } catch (err) {
      if (!controller.signal.aborted) body.replaceChildren(errorLine(err));
    }
  };
  reload.addEventListener("click", () => load(0));
  main.append(
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Trace of task ", h("a", { href: `#/tasks/${taskId}`, class: "mono" }, taskId)),
        reload,
      ),
      summary,
      body,
    ),
    h("section", { class: "card" }, panel),
  );
  load(10);
  return () => controller.abort();
}
