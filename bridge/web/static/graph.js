// Draws a task graph as SVG, layered by depth (a task sits one column right of its deepest
// dependency), states as colours, each node a link to its task page. Labels are text nodes.
import { el, safeState, svg, taskHref } from "./common.js";

const NODE_W = 180;
const NODE_H = 40;
const GAP_X = 60;
const GAP_Y = 14;
const PAD = 16;
export const MAX_NODES = 1500;

/** Depth of each node: 0 without dependencies in the graph; cycles (never expected) cut. */
export function layers(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.id));
  const incoming = new Map(nodes.map((n) => [n.id, []]));
  const outgoing = new Map(nodes.map((n) => [n.id, []]));
  for (const edge of edges) {
    if (!ids.has(edge.from) || !ids.has(edge.to)) continue;
    incoming.get(edge.to).push(edge.from);
    outgoing.get(edge.from).push(edge.to);
  }
  const depth = new Map();
  const waiting = new Map(nodes.map((n) => [n.id, incoming.get(n.id).length]));
  let frontier = nodes.filter((n) => waiting.get(n.id) === 0).map((n) => n.id);
  for (const id of frontier) depth.set(id, 0);
  while (frontier.length) {
    const next = [];
    for (const id of frontier) {
      for (const child of outgoing.get(id)) {
        depth.set(child, Math.max(depth.get(child) ?? 0, depth.get(id) + 1));
        waiting.set(child, waiting.get(child) - 1);
        if (waiting.get(child) === 0) next.push(child);
      }
    }
    frontier = next;
  }
  for (const node of nodes) if (!depth.has(node.id)) depth.set(node.id, 0);
  return { depth, incoming };
}

/** The part of a big graph around `current`: breadth first over dependencies both ways. */
export function near(nodes, edges, current, limit = MAX_NODES) {
  const links = new Map(nodes.map((n) => [n.id, []]));
  for (const edge of edges) {
    if (!links.has(edge.from) || !links.has(edge.to)) continue;
    links.get(edge.from).push(edge.to);
    links.get(edge.to).push(edge.from);
  }
  const start = links.has(current) ? current : nodes[0].id;
  const kept = new Set([start]);
  let frontier = [...kept];
  while (frontier.length && kept.size < limit) {
    const next = [];
    for (const id of frontier) {
      for (const other of links.get(id)) {
        if (kept.size >= limit) break;
        if (!kept.has(other)) {
          kept.add(other);
          next.push(other);
        }
      }
    }
    frontier = next;
  }
  return {
    nodes: nodes.filter((n) => kept.has(n.id)),
    edges: edges.filter((e) => kept.has(e.from) && kept.has(e.to)),
  };
}

function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/**
 * Render {nodes, edges} into container; `current` is the id to emphasise. Returns a line
 * to show beside the drawing when not all of the graph is drawn (else null).
 */
export function drawGraph(container, graph, current) {
  let nodes = graph.nodes || [];
  let edges = graph.edges || [];
  if (nodes.length === 0) {
    container.replaceChildren(el("p", { class: "empty" }, "No graph to draw."));
    return null;
  }
  let note = graph.truncated ? `The graph was cut at ${nodes.length} tasks.` : null;
  if (nodes.length > MAX_NODES) {
    ({ nodes, edges } = near(nodes, edges, current));
    note = `Showing the ${nodes.length} tasks nearest this one, of ${graph.nodes.length}` +
      (graph.truncated ? " or more." : ".");
  }
  const { depth, incoming } = layers(nodes, edges);
  const columns = [];
  for (const node of nodes) {
    const d = depth.get(node.id);
    (columns[d] ||= []).push(node);
  }
  // Order each column by the mean row of its dependencies (fewer crossings), then by id.
  const row = new Map();
  columns.forEach((column, index) => {
    if (index > 0) {
      const weight = (node) => {
        const parents = incoming.get(node.id).filter((p) => row.has(p));
        return parents.length ? parents.reduce((sum, p) => sum + row.get(p), 0) / parents.length : 0;
      };
      const weights = new Map(column.map((n) => [n.id, weight(n)]));
      column.sort((a, b) => weights.get(a.id) - weights.get(b.id) || (a.id < b.id ? -1 : 1));
    }
    column.forEach((node, i) => row.set(node.id, i));
  });
  const tallest = Math.max(...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * NODE_W + (columns.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const position = new Map();
  columns.forEach((column, c) => {
    const offset = ((tallest - column.length) * (NODE_H + GAP_Y)) / 2;
    column.forEach((node, r) => {
      position.set(node.id, {
        x: PAD + c * (NODE_W + GAP_X),
        y: PAD + offset + r * (NODE_H + GAP_Y),
      });
    });
  });
  const root = svg("svg", {
    class: "graph",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Task graph: ${nodes.length} tasks, ${edges.length} dependencies`,
  });
  const edgeLayer = svg("g", { class: "edges" });
  for (const edge of edges) {
    const from = position.get(edge.from);
    const to = position.get(edge.to);
    if (!from || !to) continue;
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x;
    const y2 = to.y + NODE_H / 2;
    const bend = Math.max(GAP_X / 2, (x2 - x1) / 2);
    edgeLayer.append(
      svg("path", {
        class: "edge",
        d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
        "marker-end": "url(#arrow)",
      }),
    );
  }
  const defs = svg(
    "defs",
    {},
    svg(
      "marker",
      { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }),
    ),
  );
  const nodeLayer = svg("g", { class: "nodes" });
  for (const node of nodes) {
    const at = position.get(node.id);
    const status = safeState(node.status);
    const classes = `node st-${status}${node.id === current ? " current" : ""}`;
    const link = svg(
      "a",
      {
        href: taskHref(node.id),
        class: classes,
        "data-id": node.id,
        "data-status": node.status ?? "",
        "aria-label": `${node.id}: ${node.status}`,
      },
      svg("title", {}, `${node.id} (${node.status})${node.description ? "\n" + node.description : ""}`),
      svg("rect", { x: at.x, y: at.y, width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { x: at.x + 10, y: at.y + 17 }, shorten(String(node.id), 24)),
      svg("text", { x: at.x + 10, y: at.y + 32, class: "state" }, shorten(`${node.status} · ${node.kind ?? ""}`, 30)),
    );
    nodeLayer.append(link);
  }
  root.append(defs, edgeLayer, nodeLayer);
  container.replaceChildren(root);
  const mine = position.get(current);
  if (mine) {
    container.scrollLeft = Math.max(0, mine.x - container.clientWidth / 2 + NODE_W / 2);
    container.scrollTop = Math.max(0, mine.y - container.clientHeight / 2 + NODE_H / 2);
  }
  return note;
}
