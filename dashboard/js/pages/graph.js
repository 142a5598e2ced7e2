// The growth graph: persons as nodes, "who brought whom" as arrows (referrals, account invitations, share links),
// drawn as a left-to-right forest — the project's newest edges, or one person's neighbourhood (their chain up to the
// root and everyone they brought, `depth` levels down). Every node links to the person; the edges are also a table.
import { get, projectPath, query as qs } from '../api.js';
import { h, s } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { exact, time } from '../format.js';
import { button, emptyState, field, input, pageHeader, section, select, table } from '../ui.js';
import { num } from '../insights/charts.js';
import { personPath } from './persons.js';

const CHANNELS = [['referral', 'Referral', 'c0'], ['invitation', 'Account invitation', 'c1'], ['share', 'Share link', 'c2']];
const COLOR = Object.fromEntries(CHANNELS.map(([v, , c]) => [v, c]));
const COL = 190;
const ROW = 34;
const PAD = 16;

const nodeLabel = (n) => (n.distinct_ids && n.distinct_ids[0]) || n.id;
const shorten = (text, max = 22) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

/**
 * Positions for a tidy left-to-right forest: a node's column is its distance from a root (a node nobody brought;
 * in a cycle, the first node met), its row the middle of its children's rows (leaves take the next free row).
 * Edges beyond the first into a node are drawn but do not shape the layout.
 */
export function layout(nodes, edges) {
  const index = new Map(nodes.map((n, i) => [n.id, i]));
  const out = nodes.map(() => []);
  const indegree = nodes.map(() => 0);
  for (const e of edges) {
    const a = index.get(e.from);
    const b = index.get(e.to);
    if (a === undefined || b === undefined || a === b) continue;
    out[a].push(b);
    indegree[b] += 1;
  }
  const level = nodes.map(() => -1);
  const kids = nodes.map(() => []);
  const roots = [];
  const visit = (start) => {
    level[start] = 0;
    roots.push(start);
    const queue = [start];
    for (let q = 0; q < queue.length; q += 1) {
      const i = queue[q];
      for (const c of out[i]) {
        if (level[c] < 0) {
          level[c] = level[i] + 1;
          kids[i].push(c);
          queue.push(c);
        }
      }
    }
  };
  nodes.forEach((_, i) => { if (indegree[i] === 0) visit(i); });
  for (let i = 0; i < nodes.length; i += 1) if (level[i] < 0) visit(i);
  const row = nodes.map(() => 0);
  let next = 0;
  // Iterative post-order, so deep chains cannot overflow the stack.
  for (const r of roots) {
    const stack = [[r, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [i, k] = top;
      if (k < kids[i].length) {
        top[1] += 1;
        stack.push([kids[i][k], 0]);
      } else {
        stack.pop();
        row[i] = kids[i].length ? (row[kids[i][0]] + row[kids[i][kids[i].length - 1]]) / 2 : next++;
      }
    }
  }
  return { level, row, rows: Math.max(next, 1), levels: Math.max(0, ...level) + 1 };
}

function drawing(graph) {
  const { nodes, edges } = graph;
  const { level, row, rows, levels } = layout(nodes, edges);
  const index = new Map(nodes.map((n, i) => [n.id, i]));
  const x = (i) => PAD + level[i] * COL + 8;
  const y = (i) => PAD + row[i] * ROW + 14;
  const width = PAD * 2 + (levels - 1) * COL + 170;
  const height = PAD * 2 + (rows - 1) * ROW + 16;
  const markers = s('defs', CHANNELS.map(([via, , c]) => s('marker', {
    id: `arrow-${via}`, viewBox: '0 0 10 10', refX: 16, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse', class: c,
  }, s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'graph-arrow' }))));
  const lines = edges.map((e) => {
    const a = index.get(e.from);
    const b = index.get(e.to);
    const [x1, y1, x2, y2] = [x(a), y(a), x(b), y(b)];
    const mid = (x1 + x2) / 2;
    return s('path', {
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
      class: `graph-edge ${COLOR[e.via] || ''}`,
      'marker-end': `url(#arrow-${e.via})`,
    }, s('title', `${nodeLabel(nodes[a])} → ${nodeLabel(nodes[b])} (${e.via}${e.context ? `, ${e.context}` : ''}) ${exact(e.at)}`));
  });
  const dots = nodes.map((n, i) => {
    const label = nodeLabel(n);
    const what = `${label}: brought ${n.brought}${n.brought_by ? `, brought by ${n.brought_by}` : ''}`;
    const dot = [
      s('circle', { cx: x(i), cy: y(i), r: n.center ? 7 : 5, class: `graph-node${n.center ? ' graph-center' : ''}${n.person ? '' : ' graph-unknown'}` }),
      s('text', { x: x(i) + 7, y: y(i) - 7, class: 'graph-label' }, shorten(label)),
      s('title', what),
    ];
    return n.person
      ? s('a', { href: personPath(label), 'aria-label': what, 'data-node': label }, dot)
      : s('g', { 'data-node': label }, dot);
  });
  return h('div', { class: 'graph-scroll' },
    s('svg', {
      class: 'graph-svg', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group',
      'aria-label': `Growth graph: ${nodes.length} persons, ${edges.length} edges`,
    }, markers, s('g', lines), s('g', dots)));
}

function edgeTable(graph) {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const link = (id, did) => (byId.get(id) && byId.get(id).person ? h('a', { href: personPath(did) }, did) : h('code', did));
  return table({
    caption: 'Edges of the growth graph',
    rows: graph.edges,
    empty: h('p', { class: 'empty-inline' }, 'No edges.'),
    columns: [
      { label: 'From', render: (e) => link(e.from, e.from_distinct_id) },
      { label: 'Brought', render: (e) => link(e.to, e.to_distinct_id) },
      { label: 'Via', render: (e) => h('span', h('span', { class: `swatch ${COLOR[e.via] || ''}`, 'aria-hidden': 'true' }), e.via) },
      { label: 'Context', render: (e) => (e.context ? h('code', e.context) : '—') },
      { label: 'When', render: (e) => time(e.at) },
    ],
  });
}

export async function graphPage({ query }, tabs) {
  const pid = app.project.id;
  const person = (query.get('person') || '').trim();
  const depth = query.get('depth') || '3';
  const via = query.get('via') || '';
  const personIn = input({ type: 'search', name: 'person', value: person, autocomplete: 'off', spellcheck: 'false', placeholder: 'Everyone (newest edges)' });
  const depthSel = select(['1', '2', '3', '4', '5'], depth, { name: 'depth' });
  const viaSel = select([['', 'Every channel'], ...CHANNELS.map(([v, l]) => [v, l])], via, { name: 'via' });
  const form = h('form', {
    class: 'form search-form', 'aria-label': 'Growth graph',
    onsubmit: (e) => {
      e.preventDefault();
      navigate(`${app.path('/growth/graph')}${qs({ person: personIn.value.trim(), depth: personIn.value.trim() ? depthSel.value : '', via: viaSel.value })}`);
    },
  },
  field({ label: 'Around person (distinct id)', name: 'person', control: personIn }),
  field({ label: 'Levels down', name: 'depth', control: depthSel }),
  field({ label: 'Channel', name: 'via', control: viaSel }),
  button('Show', { type: 'submit', kind: 'primary' }));
  const legend = h('ul', { class: 'legend', 'aria-label': 'Channels' }, CHANNELS.map(([, label, c]) => h('li', h('span', { class: `swatch ${c}`, 'aria-hidden': 'true' }), label)));
  const body = section(
    () => get(projectPath(pid, `/growth/graph${qs({ person, depth: person ? depth : '', via, limit: 300 })}`)),
    (graph) => {
      if (!graph.edges.length && graph.nodes.length <= 1) {
        return emptyState(person ? `Nobody was brought in by or before ${person}` : 'No growth edges yet',
          'Edges appear when a referral is attributed, an account invitation is accepted or someone arrives through a share link.');
      }
      return h('div',
        h('p', { class: 'muted', 'data-graph-summary': '' }, `${num(graph.nodes.length)} persons, ${num(graph.edges.length)} edges`,
          graph.truncated ? ' — the newest 300 only' : '', person ? ` around ${person}` : ''),
        legend,
        drawing(graph),
        h('details', { class: 'graph-table' }, h('summary', 'Edges as a table'), edgeTable(graph)));
    },
  );
  return h('div', pageHeader('Growth graph', { subtitle: 'Who brought whom: referrals, account invitations and share links.' }), tabs, form, body);
}
