// The dashboard: counts, the task table (server-side pages through the API's cursor), slots and
// workers, kept live by /api/stream. All data is rendered as text (see common.js).
import {
  STATES, ago, api, badge, coalesce, el, fill, followStream, setupSignOut, taskHref,
  typing, when,
} from "./common.js";

const PAGE = 50;
const $ = (id) => document.getElementById(id);

const state = {
  status: "",
  q: "",
  run: "",
  cursors: [null], // cursor of each page seen so far; the last is the current page's
  next: null,
  rows: [],
  selected: -1,
  loaded: false,
};

function readLocation() {
  const params = new URLSearchParams(location.search);
  state.status = STATES.includes(params.get("status")) ? params.get("status") : "";
  state.q = params.get("q") || "";
  state.run = params.get("run") || "";
  $("status").value = state.status;
  $("search").value = state.q;
  $("run").value = state.run;
}

function writeLocation() {
  const params = new URLSearchParams();
  if (state.status) params.set("status", state.status);
  if (state.q) params.set("q", state.q);
  if (state.run) params.set("run", state.run);
  const query = params.toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
}

// ---- counts

async function loadSummary() {
  const summary = await api("/api/summary");
  const counts = summary.counts || {};
  const buttons = [["", "all", summary.total ?? 0], ...STATES.map((s) => [s, s, counts[s] ?? 0])];
  const box = $("counts");
  if (box.children.length !== buttons.length) {
    // Built once and then updated in place, so keyboard focus stays on a count.
    fill(
      box,
      buttons.map(([value, label]) => {
        const button = el(
          "button",
          { type: "button", class: `count ${value ? "st-" + value : ""}`, "data-status": value },
          el("span", { class: "n" }, ""),
          el("span", { class: "l" }, label),
        );
        button.addEventListener("click", () => setStatus(value));
        return button;
      }),
    );
  }
  buttons.forEach(([value, label, n], index) => {
    const button = box.children[index];
    button.querySelector(".n").textContent = String(n);
    button.classList.toggle("active", state.status === value);
    button.setAttribute("aria-pressed", state.status === value ? "true" : "false");
    button.setAttribute("aria-label", `${label}: ${n}`);
  });
  const dispatcher = summary.dispatcher;
  const facts = [
    ["in flight", `${summary.in_flight ?? 0} / ${summary.slots ?? 0} slots`],
    ["queue depth", summary.queue_depth === null ? "unknown" : String(summary.queue_depth)],
    ["runs", String(summary.runs ?? 0)],
    [
      "dispatcher",
      dispatcher
        ? `${dispatcher.holder ?? "?"} ${dispatcher.live ? "live" : "not live"}` +
          (dispatcher.since ? ` since ${when(dispatcher.since)}` : "")
        : "none",
    ],
  ];
  fill(
    $("facts"),
    facts.map(([label, value]) => el("span", {}, `${label} `, el("b", {}, value))),
  );
}

// ---- table

function query(cursor) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (state.status) params.set("status", state.status);
  if (state.q) params.set("q", state.q);
  if (state.run) params.set("run", state.run);
  if (cursor) params.set("cursor", cursor);
  return `/api/tasks?${params}`;
}

let tableRequest = 0;

async function loadPage() {
  const mine = ++tableRequest;
  const cursor = state.cursors[state.cursors.length - 1];
  let data;
  try {
    data = await api(query(cursor));
  } catch (error) {
    if (mine !== tableRequest) return;
    const box = $("table-message");
    box.textContent = error.message;
    box.classList.remove("hidden");
    return;
  }
  if (mine !== tableRequest) return; // a newer filter won
  $("table-message").classList.add("hidden");
  const selectedId = state.rows[state.selected]?.id;
  state.rows = data.tasks || [];
  state.next = data.next_cursor || null;
  state.selected = state.rows.findIndex((task) => task.id === selectedId);
  renderRows();
}

function updatedAt(task) {
  return task.completed_at || task.started_at || task.queued_at || task.created_at;
}

function renderRows() {
  const body = $("rows");
  if (state.rows.length === 0) {
    fill(body, el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No tasks match.")));
  } else {
    fill(
      body,
      state.rows.map((task, index) => {
        const link = el("a", { href: taskHref(task.id) }, task.id);
        const row = el(
          "tr",
          { "data-index": index, class: index === state.selected ? "selected" : null },
          el("td", { class: "id mono" }, link),
          el("td", { class: "status" }, badge(task.status)),
          el("td", {}, task.kind ?? ""),
          el("td", { class: "desc", title: task.description ?? "" }, task.description ?? ""),
          el("td", { class: "num" }, `${task.attempts ?? 0}/${task.max_attempts ?? "?"}`),
          el("td", { class: "mono" }, task.worker ?? ""),
          el("td", { title: when(updatedAt(task)) }, ago(updatedAt(task))),
        );
        row.dataset.id = task.id;
        row.addEventListener("click", (event) => {
          if (event.target.closest("a")) return;
          select(index);
          open();
        });
        return row;
      }),
    );
  }
  const page = state.cursors.length;
  const first = (page - 1) * PAGE + 1;
  $("page-info").textContent = state.rows.length
    ? `page ${page}: tasks ${first}–${first + state.rows.length - 1}`
    : `page ${page}`;
  $("prev").disabled = page <= 1;
  $("next").disabled = !state.next;
  state.loaded = true;
  document.body.dataset.loaded = "true";
}

function select(index) {
  if (state.rows.length === 0) return;
  state.selected = Math.max(0, Math.min(index, state.rows.length - 1));
  for (const row of $("rows").querySelectorAll("tr")) {
    row.classList.toggle("selected", Number(row.dataset.index) === state.selected);
  }
  const row = $("rows").querySelector(`tr[data-index="${state.selected}"]`);
  if (row) row.scrollIntoView({ block: "nearest" });
}

function open() {
  const task = state.rows[state.selected];
  if (task) location.assign(taskHref(task.id));
}

function restart() {
  state.cursors = [null];
  state.selected = -1;
  writeLocation();
  loadPage();
}

/** Take the search and run fields as they are now (typing is debounced before this). */
function applyFilters() {
  const q = $("search").value.trim();
  const run = $("run").value.trim();
  if (q === state.q && run === state.run) return;
  state.q = q;
  state.run = run;
  restart();
}

function setStatus(value) {
  state.status = value;
  $("status").value = value;
  restart();
  refreshCounts.now();
}

// ---- slots and workers

async function loadSlots() {
  const data = await api("/api/slots");
  const slots = data.slots || [];
  if (slots.length === 0) {
    fill($("slots"), el("li", { class: "muted" }, "No slots."));
    return;
  }
  const busy = slots.filter((slot) => slot.active).length;
  fill(
    $("slots"),
    el("li", { class: "muted" }, `${busy} of ${slots.length} busy`),
    slots.map((slot) =>
      el(
        "li",
        {},
        el("span", { class: "mono" }, `#${slot.slot}`),
        el(
          "span",
          { class: "grow mono" },
          slot.active && slot.task_id ? el("a", { href: taskHref(slot.task_id) }, slot.task_id) : "idle",
        ),
        el("span", { class: "muted" }, slot.worker_id ?? ""),
      ),
    ),
  );
}

async function loadWorkers() {
  const data = await api("/api/workers");
  const workers = data.workers || [];
  if (workers.length === 0) {
    fill($("workers"), el("li", { class: "muted" }, "No workers on the queue."));
    return;
  }
  fill(
    $("workers"),
    workers.map((worker) =>
      el(
        "li",
        {},
        el("span", { class: "grow mono" }, worker.name ?? "?"),
        el("span", { class: "badge" }, worker.state ?? "?"),
        worker.current_task
          ? el("a", { href: taskHref(worker.current_task), class: "mono" }, worker.current_task)
          : null,
        el(
          "span",
          { class: "muted", title: when(worker.last_heartbeat) },
          worker.last_heartbeat ? `heartbeat ${ago(worker.last_heartbeat)}` : "",
        ),
      ),
    ),
  );
}

// ---- live

const refreshCounts = coalesce(loadSummary, 250);
const refreshPage = coalesce(loadPage, 400);
const refreshSide = coalesce(async () => {
  await Promise.allSettled([loadSlots(), loadWorkers()]);
}, 1000);

function onTaskEvent(event) {
  // Show the new state of a visible row at once; the coalesced re-fetches settle the rest.
  const row = [...$("rows").querySelectorAll("tr")].find((r) => r.dataset.id === event.task_id);
  if (row) {
    const task = state.rows[Number(row.dataset.index)];
    if (task) task.status = event.to_status;
    fill(row.querySelector("td.status"), badge(event.to_status));
    row.classList.remove("flash");
    void row.offsetWidth;
    row.classList.add("flash");
  }
  refreshCounts();
  refreshPage();
  refreshSide();
}

// ---- keyboard

function onKey(event) {
  if (event.key === "Escape" && (event.target === $("search") || event.target === $("run"))) {
    event.preventDefault();
    event.target.value = "";
    applyFilters();
    event.target.blur();
    return;
  }
  if (typing(event)) return;
  const statusKeys = ["0", "1", "2", "3", "4", "5", "6"];
  switch (event.key) {
    case "/":
      event.preventDefault();
      $("search").focus();
      $("search").select();
      break;
    case "j":
      select(state.selected + 1);
      break;
    case "k":
      select(state.selected <= 0 ? 0 : state.selected - 1);
      break;
    case "Enter":
      if (state.selected >= 0 && !(event.target instanceof HTMLAnchorElement) &&
          !(event.target instanceof HTMLButtonElement)) {
        event.preventDefault();
        open();
      }
      break;
    case "n":
      $("next").click();
      break;
    case "p":
      $("prev").click();
      break;
    case "?":
      $("shortcuts").open = !$("shortcuts").open;
      break;
    default:
      if (statusKeys.includes(event.key)) {
        setStatus(event.key === "0" ? "" : STATES[Number(event.key) - 1]);
      }
  }
}

// ---- start

function debounce(fn, wait) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, wait);
  };
}

function start() {
  readLocation();
  setupSignOut($("sign-out"));
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  const search = debounce(applyFilters, 250);
  for (const input of [$("search"), $("run")]) {
    input.addEventListener("input", search);
    input.addEventListener("search", search); // the field's own clear button
  }
  $("status").addEventListener("change", () => setStatus($("status").value));
  $("next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    state.selected = -1;
    loadPage();
  });
  $("prev").addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    state.selected = -1;
    loadPage();
  });
  document.addEventListener("keydown", onKey);
  refreshCounts.now();
  loadPage();
  refreshSide.now();
  let opened = false;
  followStream(onTaskEvent, $("live"), () => {
    // After a reconnect, catch up on whatever changed while the stream was down.
    if (opened) {
      refreshCounts();
      refreshPage();
      refreshSide();
    }
    opened = true;
  });
  // Worker heartbeats and slot leases change without task events: look again now and then.
  setInterval(refreshSide, 10000);
}

start();
