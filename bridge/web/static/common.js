// Shared helpers of the dashboard pages: DOM building (text only), the JSON API, the live stream.
// Every string that came from a user (ids, descriptions, outputs, errors, worker names) reaches
// the page through textContent or a text node, never parsed as HTML markup.

export const STATES = ["available", "queued", "working", "done", "failed", "cancelled"];

/** Build an element: el("td", {class: "id"}, "text", child, ...). Strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (/^on/i.test(name) || name === "style") throw new Error(`refusing attribute ${name}`);
    node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of node. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function badge(status) {
  return el("span", { class: `badge st-${safeState(status)}` }, status ?? "?");
}

export function safeState(status) {
  return STATES.includes(status) ? status : "unknown";
}

/** The page of a task: its id URL-encoded as one path segment. */
export function taskHref(id) {
  return "/tasks/" + encodeURIComponent(id);
}

export function taskApi(id, suffix = "") {
  return "/api/tasks/" + encodeURIComponent(id) + suffix;
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

export function signedIn() {
  return cookie("bridge_csrf") !== null;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Call the JSON API. Errors carry the server's one-line message; 401 goes to sign-in. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    const csrf = cookie("bridge_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    toSignIn();
    throw new ApiError(401, "not signed in");
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : response.statusText;
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
  return data;
}

export function toSignIn() {
  const next = location.pathname + location.search;
  location.assign("/login?next=" + encodeURIComponent(next));
}

/** Sign-out button: shown only when signed in through the cookie. */
export function setupSignOut(button) {
  if (!signedIn()) return;
  button.classList.remove("hidden");
  button.addEventListener("click", async () => {
    try {
      await api("/logout", { method: "POST" });
    } catch (error) {
      if (error.status === 401) return;
    }
    location.assign("/login");
  });
}

/**
 * Run fn at most once per `wait` ms however often it is asked for; a request that arrives
 * while it runs schedules one more run afterwards (coalescing bursts of events).
 */
export function coalesce(fn, wait = 300) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } catch (error) {
      console.warn(error);
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  };
  const schedule = () => {
    if (timer === null) timer = setTimeout(run, wait);
  };
  schedule.now = run;
  return schedule;
}

/** Follow /api/stream; onEvent gets each state change. The indicator shows the connection. */
export function followStream(onEvent, indicator, onOpen) {
  const source = new EventSource("/api/stream");
  const show = (state, text) => {
    if (!indicator) return;
    indicator.classList.remove("on", "off");
    if (state) indicator.classList.add(state);
    indicator.textContent = text;
  };
  source.addEventListener("open", () => {
    show("on", "live");
    if (onOpen) onOpen();
  });
  source.addEventListener("error", () => show("off", "reconnecting…"));
  source.addEventListener("task", (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  });
  return source;
}

/** Times from the API are UTC text "YYYY-MM-DD HH:MM:SS.ffffff" (or ISO); show them local. */
export function when(text) {
  if (!text) return "";
  const iso = String(text).replace(" ", "T");
  const date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
  if (Number.isNaN(date.getTime())) return String(text);
  return date.toLocaleString(undefined, { hour12: false });
}

export function ago(text) {
  if (!text) return "";
  const iso = String(text).replace(" ", "T");
  const date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (Number.isNaN(seconds)) return String(text);
  if (seconds < 60) return `${Math.max(seconds, 0)}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

/** True when a key press should be left to a text field. */
export function typing(event) {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return true;
  return (
    target instanceof HTMLInputElement ||
    target instanceof HTMLTextAreaElement ||
    target instanceof HTMLSelectElement ||
    (target instanceof HTMLElement && target.isContentEditable)
  );
}

export function pretty(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}
