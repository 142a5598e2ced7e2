// Audit history with diffs: each entry's who, what and when, and the changed fields before → after. Shared by the
// flag page and the project audit log.
import { get, projectPath, query } from '../api.js';
import { h, mount, uid } from '../dom.js';
import { actorText, exact, time } from '../format.js';
import { badge, button, emptyState, errorText } from '../ui.js';

function valueCell(v, kind) {
  if (v === null || v === undefined) return h('span', { class: 'muted' }, '—');
  const text = typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v, null, 2);
  return h(kind, { class: kind === 'del' ? 'diff-del' : 'diff-ins' }, h('code', text));
}

/** One audit entry with its diff table (or the whole document for a creation). */
export function auditEntry(entry, members, { showEntity = false } = {}) {
  const id = uid('audit');
  const all = Array.isArray(entry.diff) ? entry.diff : [];
  // Bookkeeping members change with every write: the version goes in the heading, the timestamps are the entry's.
  const versionChange = all.find((c) => c.path === 'version');
  const changes = all.filter((c) => !['version', 'updated_at', 'created_at'].includes(c.path));
  const created = entry.before === null || entry.before === undefined;
  let body;
  if (created && entry.after) {
    body = h('details', { class: 'doc' }, h('summary', 'Created with'), h('pre', { class: 'code' }, h('code', JSON.stringify(entry.after, null, 2))));
  } else if (changes.length) {
    body = h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact diff' },
      h('caption', { class: 'visually-hidden' }, `Changes of entry ${entry.id}`),
      h('thead', h('tr', h('th', { scope: 'col' }, 'Field'), h('th', { scope: 'col' }, 'Before'), h('th', { scope: 'col' }, 'After'))),
      h('tbody', changes.map((c) => h('tr',
        h('th', { scope: 'row' }, h('code', (c.path || '(whole document)').replace(/^definition\./, ''))),
        h('td', valueCell(c.before, 'del')),
        h('td', valueCell(c.after, 'ins')))))));
  } else if (entry.after || entry.before) {
    body = h('details', { class: 'doc' }, h('summary', 'Details'), h('pre', { class: 'code' }, h('code', JSON.stringify(entry.after || entry.before, null, 2))));
  } else {
    body = null;
  }
  return h('li', { class: 'audit-entry', 'aria-labelledby': id, 'data-action': entry.action },
    h('p', { id, class: 'audit-head' },
      badge(entry.action, 'neutral'), ' ',
      showEntity ? h('span', `${entry.entity_type} ${entry.entity_id} · `) : null,
      versionChange ? h('span', `version ${versionChange.before} → ${versionChange.after} · `) : null,
      h('span', `by ${actorText(entry.actor, members)} · `), time(entry.at),
      h('span', { class: 'visually-hidden' }, ` (${exact(entry.at)})`),
      entry.source_ip ? h('span', { class: 'muted small' }, ` · from ${entry.source_ip}`) : null),
    body);
}

/**
 * A paged list of a project's audit entries matching `filters` (entity_type, entity_id, actor, action): 50 at a
 * time, older ones on demand.
 */
export function auditList(projectId, filters, members, options = {}) {
  const list = h('ol', { class: 'audit' });
  const more = h('div', { class: 'actions actions-left' });
  const status = h('p', { class: 'muted', role: 'status' });
  const box = h('div', { class: 'section-body', 'aria-busy': 'true' }, status, list, more);
  let before = null;
  const page = async () => {
    status.textContent = 'Loading…';
    try {
      const answer = await get(projectPath(projectId, `/audit${query({ ...filters, limit: 50, before })}`));
      const rows = answer.results || [];
      for (const e of rows) list.append(auditEntry(e, members, options));
      status.textContent = list.children.length ? `${list.children.length} entries shown` : '';
      if (!list.children.length) box.replaceChildren(emptyState('No entries', 'Nothing matches these filters yet.'));
      if (rows.length === 50) {
        before = rows[rows.length - 1].at;
        mount(more, button('Show older entries', { onclick: () => page() }));
      } else {
        mount(more);
      }
    } catch (err) {
      status.textContent = '';
      mount(more, h('p', { class: 'panel panel-error', role: 'alert' }, errorText(err)), button('Try again', { onclick: () => page() }));
    }
  };
  box.ready = page().finally(() => box.setAttribute('aria-busy', 'false'));
  return box;
}
