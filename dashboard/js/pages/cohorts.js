// Cohorts: the list with each cohort's size, a form for a new one — dynamic (person properties and behaviour,
// combined with all/any) or static (a list of distinct ids) — and a cohort's page with its persons, its members
// (static: add and remove) and archiving.
import { api, del, get, post, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { time } from '../format.js';
import {
  badge, button, confirmDialog, emptyState, field, formSummary, input, pageHeader, section, select, submitting, table, textarea,
  toast,
} from '../ui.js';
import { num } from '../insights/charts.js';
import { OPERATORS } from '../insights/query.js';
import { personPath } from './persons.js';

const cohortPath = (id) => app.path(`/cohorts/${id}`);
const NO_VALUE = new Set(['is_set', 'is_not_set']);

/** One condition row: a person property, or "did an event at least n times in the last d days". */
function conditionRow(onRemove) {
  const kind = select([['person', 'Person property'], ['behavioral', 'Did an event']], 'person', { 'aria-label': 'Condition kind' });
  const key = input({ 'aria-label': 'Property', placeholder: 'plan', spellcheck: 'false', autocomplete: 'off' });
  const op = select(OPERATORS, 'exact', { 'aria-label': 'Operator' });
  const value = input({ 'aria-label': 'Value', placeholder: 'pro', autocomplete: 'off' });
  const event = input({ 'aria-label': 'Event', placeholder: 'task_completed', spellcheck: 'false', autocomplete: 'off', list: 'cohort-events' });
  const times = input({ type: 'number', min: 1, value: 1, 'aria-label': 'At least (times)' });
  const days = input({ type: 'number', min: 1, value: 30, 'aria-label': 'In the last (days)' });
  const negate = h('input', { type: 'checkbox', 'aria-label': 'Not' });
  const personPart = h('div', { class: 'condition-part' }, key, op, value);
  const eventPart = h('div', { class: 'condition-part', hidden: true }, event, h('span', 'at least'), times, h('span', 'times in the last'), days, h('span', 'days'));
  const sync = () => {
    personPart.hidden = kind.value !== 'person';
    eventPart.hidden = kind.value !== 'behavioral';
    value.hidden = NO_VALUE.has(op.value);
  };
  kind.addEventListener('change', sync);
  op.addEventListener('change', sync);
  const row = h('li', { class: 'condition-row' },
    h('label', { class: 'inline-check' }, negate, ' not'), kind, personPart, eventPart,
    button('Remove', { class: 'btn btn-ghost btn-small', 'aria-label': 'Remove the condition', onclick: () => onRemove(row) }));
  row.node = () => {
    const n = kind.value === 'person'
      ? { type: 'person', key: key.value.trim(), operator: op.value, ...(NO_VALUE.has(op.value) ? {} : { value: value.value.trim() }) }
      : Number(times.value) > 1
        ? { type: 'behavioral', key: event.value.trim(), value: 'performed_event_multiple', operator: 'gte', operator_value: Number(times.value), time_value: Number(days.value), time_interval: 'day' }
        : { type: 'behavioral', key: event.value.trim(), value: 'performed_event', time_value: Number(days.value), time_interval: 'day' };
    if (negate.checked) n.negation = true;
    return n;
  };
  return row;
}

function cohortForm(onCancel) {
  const name = input({ required: true, autocomplete: 'off' });
  const description = input({ autocomplete: 'off' });
  const type = select([['dynamic', 'Dynamic: who matches conditions, always current'], ['static', 'Static: a list of persons']], 'dynamic');
  const match = select([['AND', 'all of these'], ['OR', 'any of these']], 'AND', { 'aria-label': 'Match' });
  const rows = h('ol', { class: 'condition-list', 'data-field': 'filters', tabindex: '-1' });
  const addRow = () => rows.append(conditionRow((r) => r.remove()));
  addRow();
  const dynamicPart = h('fieldset', h('legend', 'Persons who match ', match), rows,
    button('Add a condition', { class: 'btn btn-secondary btn-small', onclick: addRow }));
  const ids = textarea({ rows: 5, spellcheck: 'false', placeholder: 'user_1\nuser_2' });
  const staticPart = field({ label: 'Distinct ids (one per line)', name: 'distinct_ids', control: ids });
  staticPart.hidden = true;
  type.addEventListener('change', () => {
    dynamicPart.hidden = type.value !== 'dynamic';
    staticPart.hidden = type.value !== 'static';
  });
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'new-cohort-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const pid = app.project.id;
      const made = await submitting(form, async () => {
        if (type.value === 'static') {
          const list = ids.value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
          const c = await post(projectPath(pid, '/cohorts'), { name: name.value.trim(), description: description.value.trim() || undefined, is_static: true });
          if (list.length) await post(projectPath(pid, `/cohorts/${c.id}/members`), { distinct_ids: list });
          return c;
        }
        const values = [...rows.children].map((r) => r.node());
        return post(projectPath(pid, '/cohorts'), {
          name: name.value.trim(), description: description.value.trim() || undefined, filters: { properties: { type: match.value, values } },
        });
      }, 'Creating…');
      if (made) navigate(cohortPath(made.id));
    },
  },
  h('h2', { id: 'new-cohort-title' }, 'New cohort'),
  formSummary(),
  h('div', { class: 'grid-2' }, field({ label: 'Name', name: 'name', control: name }), field({ label: 'Description', name: 'description', control: description })),
  field({ label: 'Kind', name: 'is_static', control: type }),
  dynamicPart, staticPart,
  h('div', { class: 'actions actions-left' }, button('Create cohort', { type: 'submit', kind: 'primary' }), button('Cancel', { onclick: onCancel })));
  return form;
}

export async function cohortsPage() {
  const canWrite = app.can('insights:write');
  const formBox = h('div');
  const list = section(() => get(projectPath(app.project.id, '/cohorts')).then((r) => r.results || []), (rows) => table({
    caption: 'Cohorts',
    rows,
    empty: emptyState('No cohorts yet', canWrite ? 'A cohort is a saved set of persons, usable as an insight filter or breakdown.' : 'Nobody has saved a cohort yet.'),
    columns: [
      { label: 'Cohort', render: (c) => h('div', h('a', { href: cohortPath(c.id) }, c.name), c.description ? h('p', { class: 'muted small' }, c.description) : null) },
      { label: 'Kind', render: (c) => badge(c.is_static ? 'static' : 'dynamic') },
      { label: 'Persons', class: 'num', render: (c) => h('span', { 'data-count': String(c.count) }, num(c.count)) },
      { label: 'Updated', render: (c) => time(c.updated_at) },
    ],
  }));
  return h('div',
    pageHeader('Cohorts', {
      subtitle: 'Saved sets of persons, for insight filters and breakdowns.',
      actions: canWrite ? button('New cohort', { kind: 'primary', onclick: () => { mount(formBox, cohortForm(() => mount(formBox))); formBox.querySelector('input').focus(); } }) : null,
    }),
    h('datalist', { id: 'cohort-events' }),
    formBox, list);
}

function conditionText(n) {
  if (!n) return '';
  if (n.values) return h('ul', n.values.map((v) => h('li', conditionText(v))));
  const not = n.negation ? 'not ' : '';
  if (n.type === 'person') return `${not}${n.key} ${(OPERATORS.find(([o]) => o === n.operator) || [n.operator, n.operator])[1]}${n.value !== undefined ? ` ${JSON.stringify(n.value)}` : ''}`;
  if (n.type === 'behavioral') {
    const when = n.time_value ? ` in the last ${n.time_value} ${n.time_interval}(s)` : n.explicit_datetime ? ` since ${n.explicit_datetime}` : '';
    const times = n.operator_value ? ` (${n.operator} ${n.operator_value} times)` : '';
    return `${not}${n.value.replace(/_/g, ' ')} ${n.key}${times}${when}`;
  }
  if (n.type === 'cohort') return `${not}in cohort ${n.value}`;
  return JSON.stringify(n);
}

export async function cohortPage({ params }) {
  const pid = app.project.id;
  const c = await get(projectPath(pid, `/cohorts/${encodeURIComponent(params.id)}`));
  const canWrite = app.can('insights:write');
  const persons = () => section(() => get(projectPath(pid, `/cohorts/${c.id}/persons${qs({ limit: 100 })}`)), (r) => table({
    caption: `Persons in the cohort${r.count > (r.results || []).length ? ` (the first ${(r.results || []).length} of ${num(r.count)})` : ''}`,
    rows: r.results || [],
    empty: h('p', { class: 'empty-inline' }, 'Nobody is in this cohort right now.'),
    columns: [
      { label: 'Person', render: (p) => ((p.distinct_ids || [])[0] ? h('a', { href: personPath(p.distinct_ids[0]) }, p.distinct_ids[0]) : String(p.person_id)) },
      { label: 'Distinct ids', render: (p) => h('ul', { class: 'inline-list' }, (p.distinct_ids || []).slice(0, 4).map((d) => h('li', h('code', d)))) },
    ],
  }));
  const personsBox = h('div');
  mount(personsBox, persons());
  let members = null;
  if (c.is_static && canWrite) {
    const ids = textarea({ rows: 3, spellcheck: 'false' });
    const change = (method) => async () => {
      const list = ids.value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
      const done = await submitting(members, () => api(method === 'add' ? 'POST' : 'DELETE', projectPath(pid, `/cohorts/${c.id}/members`), { distinct_ids: list }), method === 'add' ? 'Adding…' : 'Removing…');
      if (done) {
        toast(method === 'add' ? 'Members added.' : 'Members removed.');
        ids.value = '';
        mount(personsBox, persons());
      }
    };
    members = h('form', { class: 'form card', novalidate: true, 'aria-labelledby': 'members-title', onsubmit: (e) => e.preventDefault() },
      h('h2', { id: 'members-title' }, 'Members'), formSummary(),
      field({ label: 'Distinct ids (one per line)', name: 'distinct_ids', control: ids }),
      h('div', { class: 'actions actions-left' }, button('Add', { kind: 'primary', onclick: change('add') }), button('Remove', { onclick: change('remove') })));
  }
  const archive = async () => {
    if (!await confirmDialog({ title: `Delete ${c.name}?`, text: 'Insights that filter or break down by it will fail until they are changed.', confirm: 'Delete', danger: true })) return;
    try {
      await del(projectPath(pid, `/cohorts/${c.id}`));
      toast('Cohort deleted.');
      navigate(app.path('/cohorts'));
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/cohorts') }, 'Cohorts')),
    pageHeader(c.name, {
      subtitle: `${c.is_static ? 'Static' : 'Dynamic'} cohort ${c.id} · ${num(c.count)} person${c.count === 1 ? '' : 's'}${c.description ? ` · ${c.description}` : ''}`,
      actions: canWrite ? button('Delete cohort', { kind: 'danger', onclick: archive }) : null,
    }),
    !c.is_static && c.filters ? h('section', { class: 'card', 'aria-labelledby': 'def-title' }, h('h2', { id: 'def-title' }, 'Definition'),
      h('p', `Persons who match ${c.filters.properties && c.filters.properties.type === 'OR' ? 'any' : 'all'} of:`), conditionText(c.filters.properties)) : null,
    members,
    h('section', { class: 'card', 'aria-labelledby': 'persons-title' }, h('h2', { id: 'persons-title' }, 'Persons'), personsBox));
}
