// Settings of the project (name, time zone, data retention) and of the organization's projects (list, create), and
// webhooks: subscriptions, their delivery log and the replay of dead letters. Admins change them; members read.
import { del, get, patch, post, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { render } from '../router.js';
import { app } from '../shell.js';
import { exact, time } from '../format.js';
import {
  badge, button, confirmDialog, emptyState, field, formSummary, input, pageHeader, secretBox, section, select, submitting, table, toast,
} from '../ui.js';

const orgPath = (rest) => `/api/v1/organizations/${app.org.organization_id}${rest}`;

function timeZones() {
  try {
    return Intl.supportedValuesOf('timeZone');
  } catch {
    return ['UTC'];
  }
}

function projectForm(project, canWrite) {
  const name = input({ value: project.name, required: true, disabled: !canWrite });
  const tz = input({ value: project.time_zone || 'UTC', list: 'time-zones', autocomplete: 'off', spellcheck: 'false', disabled: !canWrite });
  const retention = input({ type: 'number', min: 1, value: project.retention_days ?? '', disabled: !canWrite, placeholder: 'Keep forever' });
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'project-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const days = retention.value.trim();
      const body = { name: name.value.trim(), time_zone: tz.value.trim(), retention_days: days === '' ? null : Number(days) };
      if (body.retention_days !== null && (project.retention_days === null || body.retention_days < project.retention_days)) {
        const ok = await confirmDialog({
          title: `Keep events for ${body.retention_days} days?`,
          text: 'Events older than this are deleted for good by the daily retention pass (and by “Run retention now”).',
          confirm: 'Save', danger: true,
        });
        if (!ok) return;
      }
      const saved = await submitting(form, () => patch(projectPath(project.id, ''), body));
      if (saved) {
        toast('Project settings saved.');
        render();
      }
    },
  },
  h('h2', { id: 'project-title' }, 'This project'),
  formSummary(),
  h('datalist', { id: 'time-zones' }, timeZones().map((z) => h('option', { value: z }))),
  h('div', { class: 'grid-3' },
    field({ label: 'Name', name: 'name', control: name }),
    field({ label: 'Time zone', name: 'time_zone', control: tz, hint: 'Insights bucket days and weeks at its midnights.' }),
    field({ label: 'Data retention (days)', name: 'retention_days', control: retention, hint: 'Empty: events are kept forever.' })),
  canWrite ? h('div', { class: 'actions actions-left' },
    button('Save', { type: 'submit', kind: 'primary' }),
    project.retention_days ? button('Run retention now', {
      onclick: async () => {
        if (!await confirmDialog({ title: 'Delete old events now?', text: `Events older than ${project.retention_days} days are deleted for good.`, confirm: 'Delete', danger: true })) return;
        try {
          const r = await post(projectPath(project.id, '/retention/run'));
          toast(`Retention done${r && r.events_removed !== undefined ? `: ${r.events_removed} events removed` : ''}.`);
        } catch (err) {
          toast(err.message, 'error');
        }
      },
    }) : null) : h('p', { class: 'muted small' }, 'Only admins change the project’s settings.'));
  return form;
}

function newProjectForm(onCreated) {
  const name = input({ required: true, autocomplete: 'off' });
  const box = h('div');
  const form = h('form', {
    class: 'form', novalidate: true, 'aria-labelledby': 'new-project-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const made = await submitting(form, () => post(orgPath('/projects'), { name: name.value.trim() }), 'Creating…');
      if (made) {
        name.value = '';
        mount(box, secretBox({ title: `Project API key of “${made.name}”`, value: made.api_key, note: 'The public key SDKs capture with. It is shown here once; the project’s SDK connections page lists keys later.' }));
        onCreated();
      }
    },
  },
  h('h3', { id: 'new-project-title' }, 'New project'),
  formSummary(),
  field({ label: 'Project name', name: 'name', control: name }),
  h('div', { class: 'actions actions-left' }, button('Create project', { type: 'submit', kind: 'primary' })));
  return h('div', form, box);
}

export async function projectSettingsPage() {
  const project = await get(projectPath(app.project.id, ''));
  const canWrite = app.can('projects:write');
  const listBox = h('div');
  const drawList = () => mount(listBox, section(() => get(orgPath('/projects')).then((r) => r.results || []), (rows) => table({
    caption: 'Projects of the organization',
    rows,
    empty: emptyState('No projects', null),
    columns: [
      { label: 'Project', render: (p) => h('a', { href: `/app/projects/${p.id}/settings/project` }, p.name) },
      { label: 'Id', render: (p) => String(p.id) },
      { label: 'Created', render: (p) => time(p.created_at) },
    ],
  })));
  drawList();
  return h('div', pageHeader('Project settings', { subtitle: `${app.project.name} in ${app.org.organization_name}` }),
    projectForm(project, canWrite),
    h('section', { class: 'card', 'aria-labelledby': 'projects-title' }, h('h2', { id: 'projects-title' }, 'Projects'),
      listBox, canWrite ? newProjectForm(drawList) : null));
}

function deliveriesBox(hook, canWrite) {
  const box = h('div');
  let status = '';
  const draw = () => mount(box,
    field({ label: `Deliveries to ${hook.url}`, name: 'status', control: select([['', 'Every status'], 'pending', 'delivered', 'dead'], status, { onchange: (e) => { status = e.target.value; draw(); } }) }),
    section(() => get(projectPath(app.project.id, `/webhooks/${hook.id}/deliveries${qs({ status, limit: 50 })}`)).then((r) => r.results || []), (rows) => table({
      caption: `Deliveries of webhook ${hook.id}`,
      rows,
      empty: h('p', { class: 'empty-inline' }, 'No deliveries.'),
      columns: [
        { label: 'Message', render: (d) => h('div', h('code', d.topic), h('p', { class: 'muted small' }, `#${d.outbox_id}`)) },
        { label: 'Status', render: (d) => badge(d.status, d.status === 'delivered' ? 'on' : d.status === 'dead' ? 'off' : 'neutral') },
        { label: 'Attempts', class: 'num', render: (d) => String(d.attempts) },
        { label: 'Last answer', render: (d) => (d.last_error || (d.last_status ? `HTTP ${d.last_status}` : '—')) },
        { label: 'Created', render: (d) => h('span', { title: exact(d.created_at) }, time(d.created_at)) },
        canWrite ? {
          label: 'Replay',
          render: (d) => (d.status === 'dead' ? button('Replay', {
            class: 'btn btn-secondary btn-small', 'aria-label': `Replay delivery ${d.id}`,
            onclick: async () => {
              try {
                await post(projectPath(app.project.id, `/webhooks/${hook.id}/deliveries/${d.id}/replay`));
                toast(`Delivery ${d.id} queued again.`);
                draw();
              } catch (err) {
                toast(err.message, 'error');
              }
            },
          }) : '—'),
        } : null,
      ].filter(Boolean),
    })));
  draw();
  return box;
}

function webhookForm(onDone) {
  const url = input({ type: 'url', required: true, placeholder: 'https://hooks.example.com/flywheel' });
  const topics = input({ value: 'reward.*, experiment.decided', autocomplete: 'off', spellcheck: 'false' });
  const description = input({});
  const box = h('div');
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'new-hook-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const made = await submitting(form, () => post(projectPath(app.project.id, '/webhooks'), {
        url: url.value.trim(), topics: topics.value.split(',').map((t) => t.trim()).filter(Boolean), description: description.value.trim(),
      }), 'Creating…');
      if (made) {
        mount(box, secretBox({ title: 'Signing secret', value: made.secret, note: 'Verify the Flywheel-Signature header with it. Shown once.' }));
        onDone();
      }
    },
  },
  h('h2', { id: 'new-hook-title' }, 'New webhook'),
  formSummary(),
  field({ label: 'URL', name: 'url', control: url, hint: 'Public addresses only, unless allow-listed with --webhook-allow.' }),
  h('div', { class: 'grid-2' },
    field({ label: 'Topics', name: 'topics', control: topics, hint: 'Comma-separated: reward.*, pql.qualified, experiment.decided, rollout.*, audit.*, *' }),
    field({ label: 'Description', name: 'description', control: description })),
  h('div', { class: 'actions actions-left' }, button('Create webhook', { type: 'submit', kind: 'primary' })),
  box);
  return form;
}

export async function webhooksPage() {
  const canWrite = app.can('webhooks:write');
  const listBox = h('div');
  const detail = h('div');
  const drawList = () => mount(listBox, section(() => get(projectPath(app.project.id, '/webhooks')).then((r) => r.results || []), (rows) => table({
    caption: 'Webhooks',
    rows,
    empty: emptyState('No webhooks', canWrite ? 'Subscribe an endpoint to reward, PQL, experiment, rollout or audit messages.' : null),
    columns: [
      { label: 'Endpoint', render: (w) => h('div', h('code', w.url), w.description ? h('p', { class: 'muted small' }, w.description) : null) },
      { label: 'Topics', render: (w) => h('ul', { class: 'inline-list' }, (w.topics || []).map((t) => h('li', badge(t, 'tag')))) },
      { label: 'Active', render: (w) => badge(w.active ? 'active' : 'paused', w.active ? 'on' : 'off') },
      {
        label: 'Actions',
        render: (w) => h('div', { class: 'actions actions-left' },
          button('Deliveries', { class: 'btn btn-secondary btn-small', 'aria-label': `Deliveries of ${w.url}`, onclick: () => { mount(detail, h('section', { class: 'card', 'aria-label': 'Delivery log' }, deliveriesBox(w, canWrite))); } }),
          canWrite ? button('Delete', {
            class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Delete ${w.url}`,
            onclick: async () => {
              if (!await confirmDialog({ title: 'Delete this webhook?', text: w.url, confirm: 'Delete', danger: true })) return;
              try {
                await del(projectPath(app.project.id, `/webhooks/${w.id}`));
                toast('Webhook deleted.');
                mount(detail);
                drawList();
              } catch (err) {
                toast(err.message, 'error');
              }
            },
          }) : null),
      },
    ],
  })));
  drawList();
  return h('div', pageHeader('Webhooks', { subtitle: 'Signed deliveries of outbox messages, retried with backoff; dead letters can be replayed.' }),
    canWrite ? webhookForm(drawList) : null, listBox, detail);
}
