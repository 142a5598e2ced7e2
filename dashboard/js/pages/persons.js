// Persons: the search (distinct id, email or name), and a person's profile — properties, distinct ids, groups, the
// event timeline, referrals and rewards, PQL scores with their explanation — with the GDPR export (a download) and
// erasure (admins, after typing the distinct id to confirm).
import { del, get, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { exact, time, valueText } from '../format.js';
import {
  badge, button, confirmDialog, emptyState, field, input, pageHeader, section, table, toast,
} from '../ui.js';
import { num } from '../insights/charts.js';

export const personPath = (distinctId) => app.path(`/persons/${encodeURIComponent(distinctId)}`);

export function personLabel(p) {
  const props = p.properties || {};
  return props.email || props.name || (p.distinct_ids || [])[0] || p.id;
}

export async function personsPage({ query }) {
  const pid = app.project.id;
  let term = query.get('search') || '';
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const results = section(() => get(projectPath(pid, `/persons${qs({ search: term.trim(), limit: 50 })}`)), (r) => {
    const rows = r.results || [];
    status.textContent = term.trim() ? `${rows.length} person${rows.length === 1 ? '' : 's'} match “${term.trim()}”${rows.length === 50 ? ' (the first 50)' : ''}` : `The ${rows.length} newest persons`;
    return table({
      caption: 'Persons',
      rows,
      empty: emptyState(term.trim() ? 'Nobody matches' : 'No persons yet', term.trim() ? 'Search by part of a distinct id, an email or a name.' : 'Persons appear once events arrive.'),
      columns: [
        { label: 'Person', render: (p) => h('a', { href: personPath(p.distinct_ids[0]) }, personLabel(p)) },
        { label: 'Distinct ids', render: (p) => h('ul', { class: 'inline-list' }, p.distinct_ids.slice(0, 4).map((d) => h('li', h('code', d))), p.distinct_ids.length > 4 ? h('li', { class: 'muted small' }, `+${p.distinct_ids.length - 4}`) : null) },
        { label: 'Created', render: (p) => time(p.created_at) },
      ],
    });
  });
  const search = input({ type: 'search', name: 'search', value: term, autocomplete: 'off', spellcheck: 'false', placeholder: 'Distinct id, email or name' });
  const form = h('form', {
    class: 'form search-form', role: 'search', 'aria-label': 'Persons',
    onsubmit: (e) => {
      e.preventDefault();
      term = search.value;
      history.replaceState(null, '', `${location.pathname}${qs({ search: term.trim() })}`);
      results.reload();
    },
  }, field({ label: 'Search persons', name: 'search', control: search }), button('Search', { type: 'submit', kind: 'primary' }));
  return h('div', pageHeader('Persons', { subtitle: 'The people behind your events.' }), form, status, results);
}

function propertiesTable(props) {
  const entries = Object.entries(props || {}).sort(([a], [b]) => a.localeCompare(b));
  return table({
    caption: 'Properties',
    rows: entries,
    empty: h('p', { class: 'empty-inline' }, 'No properties.'),
    columns: [
      { label: 'Property', render: ([k]) => h('code', k) },
      { label: 'Value', render: ([, v]) => (typeof v === 'string' ? v : valueText(v)) },
    ],
  });
}

function timeline(pid, person) {
  const box = h('div');
  let before = null;
  const list = h('ol', { class: 'timeline' });
  const more = button('Load older events', { class: 'btn btn-secondary btn-small' });
  const load = async () => {
    const r = await get(projectPath(pid, `/events${qs({ person_id: person.id, limit: 50, before })}`));
    const rows = r.results || [];
    for (const e of rows) {
      list.append(h('li', { class: 'timeline-item' },
        h('div', h('strong', e.event), ' ', h('span', { class: 'muted small' }, h('code', e.distinct_id))),
        h('div', { class: 'muted small' }, h('time', { datetime: e.timestamp, title: exact(e.timestamp) }, exact(e.timestamp))),
        Object.keys(e.properties || {}).length ? h('details', h('summary', 'Properties'), h('pre', { class: 'code' }, JSON.stringify(e.properties, null, 2))) : null));
    }
    if (rows.length) before = rows[rows.length - 1].timestamp;
    more.hidden = rows.length < 50;
    if (!list.children.length) mount(box, h('p', { class: 'empty-inline' }, 'No events.'));
  };
  more.addEventListener('click', () => load().catch((err) => toast(err.message, 'error')));
  mount(box, list, more);
  return section(load, () => box);
}

function growth(pid, person) {
  const did = person.distinct_ids[0];
  return section(async () => {
    const programs = (await get(projectPath(pid, '/referral-programs')).catch(() => ({ results: [] }))).results || [];
    const [rewards, referrals, path] = await Promise.all([
      Promise.all(person.distinct_ids.slice(0, 10).map((d) => get(projectPath(pid, `/rewards${qs({ beneficiary: d, limit: 100 })}`)).then((r) => r.results || []).catch(() => []))).then((x) => x.flat()),
      Promise.all(programs.flatMap((p) => person.distinct_ids.slice(0, 10).map((d) => get(projectPath(pid, `/referral-programs/${encodeURIComponent(p.key)}/referrals${qs({ referrer: d, limit: 100 })}`))
        .then((r) => (r.results || []).map((x) => ({ ...x, program: p.key }))).catch(() => [])))).then((x) => x.flat()),
      get(projectPath(pid, `/growth/path${qs({ person: did })}`)).catch(() => null),
    ]);
    return { rewards, referrals, path };
  }, ({ rewards, referrals, path }) => h('div',
    h('h3', 'Referrals made'),
    table({
      caption: 'Referrals made', rows: referrals, empty: h('p', { class: 'empty-inline' }, 'None.'),
      columns: [
        { label: 'Referee', render: (r) => h('code', r.referee || r.referee_distinct_id || '—') },
        { label: 'Program', render: (r) => r.program },
        { label: 'Status', render: (r) => badge(r.status, r.status === 'qualified' || r.status === 'rewarded' ? 'on' : 'neutral') },
        { label: 'When', render: (r) => time(r.created_at || r.attributed_at) },
      ],
    }),
    h('h3', 'Rewards'),
    table({
      caption: 'Rewards', rows: rewards, empty: h('p', { class: 'empty-inline' }, 'None.'),
      columns: [
        { label: 'Amount', render: (r) => `${num(r.amount)} ${r.unit}` },
        { label: 'Reason', render: (r) => r.reason || '—' },
        { label: 'Status', render: (r) => badge(r.status) },
        { label: 'Created', render: (r) => time(r.created_at) },
      ],
    }),
    h('h3', 'Growth path'),
    path && (path.steps || []).length
      ? h('ol', { class: 'growth-path' }, path.steps.map((st) => h('li', `${st.via}${st.context ? ` (${st.context})` : ''}: `, h('code', String(st.from)), ' brought ', h('code', String(st.person)), st.at ? ` on ${exact(st.at)}` : '')))
      : h('p', { class: 'empty-inline' }, 'Not brought in by anyone (a root of the growth graph).'),
    h('p', h('a', { href: app.path(`/growth/graph${qs({ person: did })}`) }, 'Show in the growth graph'))));
}

/** PQL scores of one entity (a person's distinct id or an account's key) by the models `applies` keeps. */
export function pqlScores(pid, entity, applies, none) {
  return section(async () => {
    const models = (await get(projectPath(pid, '/pql-models')).catch(() => ({ results: [] }))).results || [];
    return Promise.all(models.filter(applies).map((m) => get(projectPath(pid, `/pql-models/${encodeURIComponent(m.key)}/scores/${encodeURIComponent(entity)}`))
      .then((score) => ({ model: m, score })).catch((err) => ({ model: m, error: err }))));
  }, (items) => (items.length ? h('div', items.map(({ model, score, error }) => h('div', { class: 'pql' },
    h('h3', model.name),
    error ? h('p', { class: 'muted' }, error.status === 404 ? 'Not scored yet.' : error.message)
      : [h('p', h('strong', { 'data-score': String(score.score) }, `${num(score.score)} points`), ' of a threshold of ', num(model.threshold), ' ',
        score.qualified ? badge('qualified', 'on') : badge('not qualified', 'off')),
      score.disqualified_by ? h('p', { class: 'notice' }, `Disqualified by ${score.disqualified_by}`) : null,
      Array.isArray(score.explanation) && score.explanation.length ? h('ul', score.explanation.map((x) => h('li', `${x.rule || x.id}: ${num(x.points)} points${x.count !== undefined ? ` (${x.count} events)` : ''}`))) : null])))
    : h('p', { class: 'empty-inline' }, none)));
}

export async function personPage({ params }) {
  const pid = app.project.id;
  const person = await get(projectPath(pid, `/persons/${encodeURIComponent(params.id)}`));
  const did = params.id;
  const canErase = app.can('persons:write');
  const exportHref = projectPath(pid, `/persons/${encodeURIComponent(did)}/export${qs({ format: 'ndjson' })}`);
  const erase = async () => {
    const ok = await confirmDialog({
      title: `Erase ${personLabel(person)}?`,
      text: `Every event, distinct id (${person.distinct_ids.join(', ')}), property and growth record of this person is deleted for good, in the event log too. This cannot be undone.`,
      confirm: 'Erase for good',
      danger: true,
    });
    if (!ok) return;
    try {
      await del(projectPath(pid, `/persons/${encodeURIComponent(did)}`));
      toast('The person has been erased.');
      navigate(app.path('/persons'));
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/persons') }, 'Persons')),
    pageHeader(personLabel(person), {
      subtitle: `Person ${person.id} · first seen ${exact(person.created_at)}${person.is_identified ? ' · identified' : ' · anonymous'}`,
      actions: [
        h('a', { href: exportHref, class: 'btn btn-secondary', download: `person-${did}.ndjson` }, 'Export data (GDPR)'),
        canErase ? button('Erase person', { kind: 'danger', onclick: erase }) : null,
      ],
    }),
    h('div', { class: 'grid-2' },
      h('section', { class: 'card', 'aria-labelledby': 'p-props' }, h('h2', { id: 'p-props' }, 'Properties'), propertiesTable(person.properties)),
      h('div',
        h('section', { class: 'card', 'aria-labelledby': 'p-ids' }, h('h2', { id: 'p-ids' }, 'Distinct ids'),
          h('ul', { class: 'inline-list', 'data-distinct-ids': '' }, person.distinct_ids.map((d) => h('li', h('code', d))))),
        (person.groups || []).length ? h('section', { class: 'card', 'aria-labelledby': 'p-groups' }, h('h2', { id: 'p-groups' }, 'Groups'),
          h('ul', { class: 'plain-list' }, person.groups.map((g) => h('li', `${g.group_type}: `,
            h('a', { href: app.path(`/accounts/${encodeURIComponent(g.group_type)}/${encodeURIComponent(g.group_key)}`) }, g.properties && g.properties.name ? `${g.properties.name} (${g.group_key})` : g.group_key))))) : null,
        h('section', { class: 'card', 'aria-labelledby': 'p-pql' }, h('h2', { id: 'p-pql' }, 'PQL score'), pqlScores(pid, person.distinct_ids[0], (m) => !m.unit || m.unit === 'person', 'No PQL model in this project.')))),
    h('section', { class: 'card', 'aria-labelledby': 'p-growth' }, h('h2', { id: 'p-growth' }, 'Referrals and rewards'), growth(pid, person)),
    h('section', { class: 'card', 'aria-labelledby': 'p-events' }, h('h2', { id: 'p-events' }, 'Events'), timeline(pid, person)));
}


