// A flag's page: rules (forms, or text for read-only roles), "test a user", code snippets and the audit history.
import { get, projectPath } from '../api.js';
import { h, mount } from '../dom.js';
import { app } from '../shell.js';
import { badge, emptyState, pageHeader } from '../ui.js';
import { flagEditor, flagSummary } from '../flags/editor.js';
import { evaluator } from '../flags/evaluate.js';
import { snippets } from '../flags/snippets.js';
import { auditList } from '../flags/history.js';
import { flagPath, orgMembers } from './flags.js';

const TABS = [
  { id: '', label: 'Rules' },
  { id: 'test', label: 'Test a user' },
  { id: 'code', label: 'Code' },
  { id: 'history', label: 'History', need: 'audit:read' },
];

function header(doc) {
  return pageHeader(doc.key, {
    subtitle: doc.description || null,
    actions: h('ul', { class: 'inline-list', 'aria-label': 'About this flag' },
      h('li', badge(doc.value_type, 'neutral')),
      h('li', badge(`version ${doc.version}`, 'neutral')),
      doc.archived ? h('li', badge('archived', 'off')) : null),
  });
}

export async function flagPage({ params }) {
  const key = params.key;
  const tab = params.tab || '';
  const known = TABS.find((t) => t.id === tab);
  if (!known) {
    return h('div', pageHeader('Page not found'), emptyState(`A flag has no “${tab}” page.`, null,
      h('a', { href: flagPath(key), class: 'btn btn-primary' }, 'Go to the flag')));
  }
  const pid = app.project.id;
  const [doc, envs] = await Promise.all([
    get(projectPath(pid, `/features/${encodeURIComponent(key)}`)),
    get(projectPath(pid, '/environments')).then((r) => r.results || []),
  ]);
  const headerBox = h('div', header(doc));
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Flag sections' },
    h('ul', TABS.filter((t) => !t.need || app.can(t.need)).map((t) => h('li',
      h('a', { href: flagPath(key, t.id), class: 'tab', 'aria-current': t.id === tab ? 'page' : undefined }, t.label)))));
  let body;
  if (tab === '') {
    if (app.can('features:write')) {
      const others = (await get(projectPath(pid, '/features'))).results.map((f) => f.key);
      body = flagEditor({ doc, envs, otherKeys: others, onSaved: (saved) => mount(headerBox, header(saved)) });
    } else {
      body = h('div',
        h('p', { class: 'notice', 'data-read-only': '' }, `Your role (${app.role}) can read this flag but not change it.`),
        flagSummary(doc, envs));
    }
  } else if (tab === 'test') {
    body = evaluator(doc, envs);
  } else if (tab === 'code') {
    const connections = (await get(projectPath(pid, '/sdk-connections'))).results || [];
    body = snippets(doc, connections);
  } else {
    const members = await orgMembers();
    body = h('section', { class: 'card', 'aria-labelledby': 'hist-title' },
      h('h2', { id: 'hist-title' }, 'History'),
      auditList(pid, { entity_type: 'feature', entity_id: key }, members));
  }
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/flags') }, 'Feature flags'), ' / ', key),
    headerBox,
    tabs,
    body);
}
