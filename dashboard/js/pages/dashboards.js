// Dashboards of saved insights: the list, and one dashboard with each insight run and drawn as a tile (removable,
// and openable in the builder, by those who may write insights).
import { del, get, patch, post, projectPath } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { time } from '../format.js';
import {
  button, confirmDialog, emptyState, errorPanel, field, formSummary, input, loading, pageHeader, section, submitting, table, toast,
} from '../ui.js';
import { insightsPath, renderAnswer, runInsight } from './insights.js';
import { defaultDraft, fromBody } from '../insights/query.js';

const dashPath = (key) => app.path(`/dashboards/${encodeURIComponent(key)}`);

function newDashboardForm(onCancel) {
  const name = input({ required: true, autocomplete: 'off' });
  const key = input({ required: true, autocomplete: 'off', spellcheck: 'false' });
  name.addEventListener('input', () => {
    if (!key.dataset.touched) key.value = name.value.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  });
  key.addEventListener('input', () => { key.dataset.touched = '1'; });
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'new-dash-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const made = await submitting(form, () => post(projectPath(app.project.id, '/dashboards'),
        { key: key.value.trim(), name: name.value.trim(), insights: [] }), 'Creating…');
      if (made) navigate(dashPath(made.key));
    },
  },
  h('h2', { id: 'new-dash-title' }, 'New dashboard'),
  formSummary(),
  h('div', { class: 'grid-2' }, field({ label: 'Name', name: 'name', control: name }),
    field({ label: 'Key', name: 'key', control: key, hint: 'Letters, digits, - _ and .' })),
  h('div', { class: 'actions actions-left' }, button('Create dashboard', { type: 'submit', kind: 'primary' }), button('Cancel', { onclick: onCancel })));
  return form;
}

export async function dashboardsPage() {
  const canWrite = app.can('insights:write');
  const formBox = h('div');
  const list = section(() => get(projectPath(app.project.id, '/dashboards')).then((r) => r.results || []), (rows) => table({
    caption: 'Dashboards',
    rows,
    empty: emptyState('No dashboards yet', canWrite ? 'Build an insight and save it to a new dashboard, or create an empty one.' : 'Nobody has saved a dashboard in this project yet.'),
    columns: [
      { label: 'Dashboard', render: (d) => h('a', { href: dashPath(d.key) }, d.name) },
      { label: 'Insights', render: (d) => String((d.insights || []).length) },
      { label: 'Updated', render: (d) => time(d.updated_at) },
    ],
  }));
  return h('div',
    pageHeader('Dashboards', {
      subtitle: 'Saved insights, run when you open them.',
      actions: [h('a', { href: insightsPath(), class: 'btn btn-secondary' }, 'New insight'),
        canWrite ? button('New dashboard', { kind: 'primary', onclick: () => { mount(formBox, newDashboardForm(() => mount(formBox))); formBox.querySelector('input').focus(); } }) : null],
    }),
    formBox, list);
}

function tile(dash, insight, index, canWrite, onRemove) {
  const body = h('div', { class: 'tile-body', 'aria-busy': 'true' }, loading('Running…'));
  const draft = { ...defaultDraft(insight.kind), chart: insight.chart || 'line' };
  const ready = runInsight(insight.kind, insight.query)
    .then((answer) => mount(body, renderAnswer(insight.kind, answer, draft)))
    .catch((err) => mount(body, errorPanel(err)))
    .finally(() => body.setAttribute('aria-busy', 'false'));
  const titleId = `tile-${index}`;
  const el = h('section', { class: 'card tile', 'aria-labelledby': titleId, 'data-kind': insight.kind },
    h('div', { class: 'answer-head' }, h('h2', { id: titleId }, insight.name),
      h('div', { class: 'actions' },
        h('span', { class: 'badge' }, insight.kind),
        h('a', {
          href: `${insightsPath(fromBody(insight.kind, insight.query || {}, insight.chart))}${canWrite ? `&dashboard=${encodeURIComponent(dash.key)}&tile=${index}` : ''}`,
          class: 'btn btn-ghost btn-small', 'aria-label': `${canWrite ? 'Edit' : 'Open'} ${insight.name} in the builder`,
        }, canWrite ? 'Edit' : 'Open'),
        canWrite ? button('Remove', { class: 'btn btn-ghost btn-small', 'aria-label': `Remove ${insight.name}`, onclick: () => onRemove(index) }) : null)),
    body);
  const holder = h('div', { class: 'section-body' });
  holder.ready = ready;
  el.append(holder);
  return el;
}

export async function dashboardPage({ params }) {
  const canWrite = app.can('insights:write');
  let dash = await get(projectPath(app.project.id, `/dashboards/${encodeURIComponent(params.key)}`));
  const tiles = h('div', { class: 'tiles' });
  const draw = () => mount(tiles, (dash.insights || []).length
    ? dash.insights.map((ins, i) => tile(dash, ins, i, canWrite, remove))
    : emptyState('This dashboard is empty', canWrite ? 'Build an insight and choose “Save to a dashboard”.' : null,
      canWrite ? h('a', { href: insightsPath(), class: 'btn btn-primary' }, 'New insight') : null));
  async function remove(index) {
    const ins = dash.insights[index];
    if (!await confirmDialog({ title: `Remove “${ins.name}”?`, text: 'The insight leaves this dashboard; its events are not touched.', confirm: 'Remove', danger: true })) return;
    try {
      dash = await patch(projectPath(app.project.id, `/dashboards/${encodeURIComponent(dash.key)}`),
        { insights: dash.insights.filter((_, i) => i !== index), version: dash.version });
      toast(`Removed “${ins.name}”.`);
      draw();
    } catch (err) {
      toast(err.status === 409 ? 'Someone changed this dashboard meanwhile: reload it and try again.' : err.message, 'error');
    }
  }
  draw();
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/dashboards') }, 'Dashboards')),
    pageHeader(dash.name, {
      subtitle: dash.description || `${(dash.insights || []).length} insight(s)`,
      actions: canWrite ? [h('a', { href: insightsPath(), class: 'btn btn-secondary' }, 'Add an insight'),
        button('Archive', {
          class: 'btn btn-ghost btn-danger-text',
          onclick: async () => {
            if (!await confirmDialog({ title: `Archive “${dash.name}”?`, text: 'It leaves the list; its versions stay in the audit log.', confirm: 'Archive', danger: true })) return;
            try {
              await del(projectPath(app.project.id, `/dashboards/${encodeURIComponent(dash.key)}`));
              toast('Dashboard archived.');
              navigate(app.path('/dashboards'));
            } catch (err) {
              toast(err.message, 'error');
            }
          },
        })] : null,
    }),
    tiles);
}
