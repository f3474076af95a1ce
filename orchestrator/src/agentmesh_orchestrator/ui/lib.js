// Shared pieces of the dashboard: the session's token, API calls, DOM building and
// formatting. Everything from the API is put in the page as text (textContent),
// never parsed as HTML; the one exception is the sanitised answer (task.js).

const TOKEN_KEY = "agentmesh.token";

// The token lives in this tab's sessionStorage: sent only as an Authorization header
// by our own fetch calls, never in a URL or a cookie, gone when the tab closes.
export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  signIn: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// A 401 signs the tab out (the token was refused), unless `signOutOn401` is false.
export async function api(path, { method = "GET", body, signal, signOutOn401 = true } = {}) {
  const headers = { Authorization: `Bearer ${session.token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  const data = await reply.json().catch(() => null);
  if (reply.status === 401 && signOutOn401) {
    session.signOut();
    window.dispatchEvent(new Event("agentmesh:signed-out"));
  }
  if (!reply.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `${reply.status} ${reply.statusText}`;
    throw new ApiError(reply.status, detail);
  }
  return data;
}

// h("a", {href: "#/x", class: "y", onclick: f}, "text", child, ...): strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Run `step` now and again `ms` after each run ends, until the returned stop is called.
export function every(ms, step) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    try {
      await step();
    } finally {
      if (!stopped) timer = setTimeout(run, ms);
    }
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${m % 60}m`;
  return `${Math.floor(hours / 24)}d`;
}

export const number = (n) => (n ?? 0).toLocaleString("en-US");

export function tokens(usage) {
  return number((usage?.input_tokens ?? 0) + (usage?.output_tokens ?? 0));
}

export function statusBadge(status, id) {
  return h("span", { class: `status status-${status}`, id }, status);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function errorLine(err) {
  return h("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err));
}
