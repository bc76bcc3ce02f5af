// A task's page: fields, why line, dependencies and dependents, output, error with traceback,
// timeline, its graph; Retry and Cancel. Kept live by /api/stream. Data rendered as text only.
import {
  api, badge, coalesce, el, fill, followStream, pretty, setupSignOut, taskApi, taskHref, typing,
  when,
} from "./common.js";
import { drawGraph } from "./graph.js";

const $ = (id) => document.getElementById(id);
const taskId = decodeURIComponent(location.pathname.replace(/^\/tasks\//, ""));
let task = null;
let graphIds = new Set([taskId]);

const PEERS_SHOWN = 200;
const RETRYABLE = new Set(["failed", "cancelled"]);
const CANCELLABLE = new Set(["available", "queued", "working"]);

function message(text, kind = "error") {
  const box = $("message");
  if (!text) {
    box.classList.add("hidden");
    return;
  }
  box.className = `message ${kind}`;
  box.textContent = text;
}

function field(label, value, { mono = false, title = null } = {}) {
  if (value === null || value === undefined || value === "") return [];
  return [el("dt", {}, label), el("dd", { class: mono ? "mono" : null, title }, String(value))];
}

function peers(list, items, empty) {
  if (!items || items.length === 0) {
    fill(list, el("li", { class: "muted" }, empty));
    return;
  }
  const shown = items.slice(0, PEERS_SHOWN);
  fill(
    list,
    items.length > shown.length
      ? el("li", { class: "muted" }, `${items.length} tasks; the first ${shown.length}:`)
      : null,
    shown.map((item) =>
      el(
        "li",
        {},
        el("a", { class: "grow mono", href: taskHref(item.id) }, item.id),
        badge(item.status),
      ),
    ),
  );
}

async function loadTask() {
  try {
    task = await api(taskApi(taskId));
  } catch (error) {
    if (error.status === 404) {
      $("task-id").textContent = taskId;
      document.title = `bridge · ${taskId}`;
      message(`No task ${taskId}.`);
      $("retry").disabled = true;
      $("cancel").disabled = true;
      document.body.dataset.loaded = "true";
      return;
    }
    throw error;
  }
  document.title = `bridge · ${task.id}`;
  $("task-id").textContent = task.id;
  fill($("task-status"), badge(task.status));
  $("task-status").dataset.status = task.status;
  $("description").textContent = task.description ?? "";
  $("why").textContent = task.why ?? "";
  $("retry").disabled = !RETRYABLE.has(task.status);
  $("cancel").disabled = !CANCELLABLE.has(task.status);
  const attempts = `${task.attempts ?? 0} of ${task.max_attempts ?? "?"}`;
  fill(
    $("fields"),
    field("kind", task.kind, { mono: true }),
    field("run", task.run, { mono: true }),
    field("attempts", attempts),
    field("failures", task.failures),
    field("priority", task.priority),
    field("queue", task.queue, { mono: true }),
    field("pool", task.pool, { mono: true }),
    field("timeout", task.timeout === null ? null : `${task.timeout} s`),
    field("worker", task.worker, { mono: true }),
    field("job", task.job_id, { mono: true }),
    field(
      "progress",
      task.progress === null || task.progress === undefined
        ? null
        : `${Math.round(task.progress * 100)}%${task.progress_message ? " · " + task.progress_message : ""}`,
    ),
    field("not before", when(task.not_before), { title: task.not_before }),
    field("created", when(task.created_at), { title: task.created_at }),
    field("queued", when(task.queued_at), { title: task.queued_at }),
    field("started", when(task.started_at), { title: task.started_at }),
    field("completed", when(task.completed_at), { title: task.completed_at }),
    field("note", task.note),
    el("dt", {}, "payload"),
    el("dd", {}, el("pre", { tabindex: 0 }, task.payload === null ? "null" : pretty(task.payload))),
  );
  peers($("dependencies"), task.dependency_states, "No dependencies.");
  peers($("dependents"), task.dependents, "No dependents.");
  const hasOutput = task.output !== null && task.output !== undefined;
  $("output").textContent = hasOutput ? pretty(task.output) : "No output yet.";
  $("output").classList.toggle("muted", !hasOutput);
  const failed = Boolean(task.error || task.traceback);
  $("error-panel").classList.toggle("hidden", !failed);
  $("error").textContent = task.error ?? "";
  $("traceback").textContent = task.traceback ?? "";
  $("traceback").classList.toggle("hidden", !task.traceback);
  $("traceback-title").classList.toggle("hidden", !task.traceback);
  document.body.dataset.loaded = "true";
  document.body.dataset.status = task.status;
}

async function loadEvents() {
  const params = new URLSearchParams({ task: taskId, limit: "500" });
  const data = await api(`/api/events?${params}`);
  const events = data.events || [];
  if (events.length === 0) {
    fill($("events"), el("li", { class: "muted" }, "No events."));
    return;
  }
  fill(
    $("events"),
    events
      .slice()
      .reverse()
      .map((event) =>
        el(
          "li",
          { class: `st-${event.to_status}` },
          el("span", {}, `${event.from_status ?? "new"} → `),
          badge(event.to_status),
          el("span", { class: "when", title: event.at }, when(event.at)),
          event.attempt ? el("span", { class: "when" }, `attempt ${event.attempt}`) : null,
          event.worker ? el("span", { class: "when mono" }, event.worker) : null,
          event.detail ? el("span", { class: "detail" }, event.detail) : null,
        ),
      ),
  );
}

async function loadGraph() {
  const params = new URLSearchParams({ root: taskId, format: "json" });
  let graph;
  try {
    graph = await api(`/api/graph?${params}`);
  } catch (error) {
    fill($("graph"), el("p", { class: "empty" }, error.message));
    return;
  }
  graphIds = new Set((graph.nodes || []).map((node) => node.id));
  graphIds.add(taskId);
  const note = drawGraph($("graph"), graph, taskId);
  $("graph-note").textContent = note ?? "";
  $("graph-note").classList.toggle("hidden", !note);
  $("graph").dataset.drawn = "true";
}

const refresh = coalesce(async () => {
  await Promise.allSettled([loadTask(), loadEvents()]);
}, 250);
const refreshGraph = coalesce(loadGraph, 600);

async function act(action) {
  const button = $(action);
  if (button.disabled) return;
  button.disabled = true;
  try {
    const data = await api(taskApi(taskId, `/${action}`), { method: "POST" });
    message(action === "retry" ? "Retried: the task is available again." : "Cancelled.", "ok");
    if (data && data.task) task = data.task;
  } catch (error) {
    message(error.message);
  }
  refresh.now();
  refreshGraph();
}

function onKey(event) {
  if (typing(event)) return;
  if (event.key === "r") act("retry");
  else if (event.key === "c") act("cancel");
  else if (event.key === "u") location.assign("/");
  else if (event.key === "/") location.assign("/");
}

function start() {
  $("task-id").textContent = taskId;
  setupSignOut($("sign-out"));
  $("retry").addEventListener("click", () => act("retry"));
  $("cancel").addEventListener("click", () => act("cancel"));
  document.addEventListener("keydown", onKey);
  refresh.now();
  loadGraph();
  let opened = false;
  followStream(
    (event) => {
      if (event.task_id === taskId) refresh();
      if (graphIds.has(event.task_id)) refreshGraph();
    },
    $("live"),
    () => {
      if (opened) {
        refresh();
        refreshGraph();
      }
      opened = true;
    },
  );
}

start();
