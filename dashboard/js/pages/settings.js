// Settings: members and roles, team invitations, personal API keys, environments and SDK connections, the project's
// and organization's audit logs; the project itself and webhooks are in project-settings.js.
import { del, get, patch, post, projectPath, query } from '../api.js';
import { h, mount, uid } from '../dom.js';
import { app } from '../shell.js';
import { session } from '../session.js';
import { time } from '../format.js';
import { auditEntry, auditList } from '../flags/history.js';
import {
  badge, button, confirmDialog, emptyState, errorPanel, field, formSummary, input, pageHeader, secretBox, section, select,
  submitting, table, toast, errorText,
} from '../ui.js';
import { orgMembers } from './flags.js';
import { projectSettingsPage, webhooksPage } from './project-settings.js';

const orgPath = (rest) => `/api/v1/organizations/${app.org.organization_id}${rest}`;

function inviteLink(token) {
  return `${location.origin}/app/accept?token=${encodeURIComponent(token)}`;
}

function projectsText(projects) {
  if (!projects) return 'All projects';
  const names = projects.map((id) => (app.projects.find((p) => p.project.id === id)?.project.name) || `#${id}`);
  return names.join(', ');
}

function membersSection() {
  const admin = app.atLeast('admin');
  const notice = h('div', { 'aria-live': 'polite' });
  return h('section', { class: 'card', 'aria-labelledby': 'members-title' },
    h('h2', { id: 'members-title' }, 'Members'),
    notice,
    section(() => get(orgPath('/members')).then((r) => r.results || []), (members, reload) => table({
      caption: 'Members of the organization',
      rows: members,
      empty: emptyState('No members', null),
      rowProps: (m) => ({ 'data-member': m.email }),
      columns: [
        { label: 'Member', render: (m) => h('div', h('span', m.name || m.email), m.user_id === session.user.id ? h('span', { class: 'muted' }, ' (you)') : null, m.name ? h('p', { class: 'muted small' }, m.email) : null) },
        {
          label: 'Role',
          render: (m) => {
            const manageable = admin && m.user_id !== session.user.id && (m.role !== 'owner' || app.role === 'owner');
            if (!manageable) return badge(m.role, 'role');
            const roles = ['viewer', 'member', 'admin', ...(app.role === 'owner' ? ['owner'] : [])];
            const sel = select(roles, m.role, {
              'aria-label': `Role of ${m.email}`,
              onchange: async (e) => {
                const role = e.target.value;
                sel.disabled = true;
                try {
                  await patch(orgPath(`/members/${m.user_id}`), { role });
                  m.role = role;
                  toast(`${m.email} is now ${role === 'admin' ? 'an' : 'a'} ${role}.`);
                } catch (err) {
                  e.target.value = m.role;
                  mount(notice, h('p', { class: 'panel panel-error', role: 'alert' }, errorText(err)));
                } finally {
                  sel.disabled = false;
                }
              },
            });
            return sel;
          },
        },
        { label: 'Projects', render: (m) => projectsText(m.projects) },
        { label: 'Joined', render: (m) => time(m.joined_at) },
        {
          label: 'Actions',
          render: (m) => (admin && m.user_id !== session.user.id && (m.role !== 'owner' || app.role === 'owner')
            ? button('Remove', {
              kind: 'ghost', class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Remove ${m.email}`,
              onclick: async () => {
                if (!await confirmDialog({ title: `Remove ${m.email}?`, text: 'They lose access at once; their API keys in this organization are revoked.', confirm: 'Remove', danger: true })) return;
                try {
                  await del(orgPath(`/members/${m.user_id}`));
                  toast(`${m.email} was removed.`);
                  reload();
                } catch (err) {
                  mount(notice, h('p', { class: 'panel panel-error', role: 'alert' }, errorText(err)));
                }
              },
            })
            : '—'),
        },
      ],
    })));
}

function inviteSection(onInvited) {
  const email = input({ type: 'email', autocomplete: 'off' });
  const role = select([['viewer', 'Viewer'], ['member', 'Member'], ['admin', 'Admin'], ...(app.role === 'owner' ? [['owner', 'Owner']] : [])], 'member');
  const days = input({ type: 'number', min: '1', max: '30', value: '7', class: 'input input-narrow' });
  const result = h('div', { 'aria-live': 'polite' });
  const form = h('form', {
    class: 'form',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const answer = await submitting(form, () => post(orgPath('/invitations'), {
        email: email.value.trim(), role: role.value, expires_in_days: Number(days.value) || undefined,
      }), 'Inviting…');
      if (!answer) return;
      mount(result, secretBox({
        title: `Invitation link for ${answer.email} (${answer.role})`,
        value: inviteLink(answer.token),
        note: 'Send this link to them. It is shown once, works once and expires on the date above; revoke it below if needed.',
      }));
      email.value = '';
      onInvited();
    },
  },
  formSummary(),
  h('div', { class: 'grid-3' },
    field({ label: 'Email', control: email, name: 'email' }),
    field({ label: 'Role', control: role, name: 'role', hint: 'Viewers read; members also change flags, insights, experiments and growth; admins manage members too.' }),
    field({ label: 'Expires in (days)', control: days, name: 'expires_in_days' })),
  h('div', { class: 'actions' }, button('Invite', { type: 'submit', kind: 'primary' })));
  return h('section', { class: 'card', 'aria-labelledby': 'invite-title' }, h('h2', { id: 'invite-title' }, 'Invite someone'), form, result);
}

function invitationsSection() {
  const box = h('div');
  const load = () => mount(box, section(() => get(orgPath('/invitations')).then((r) => r.results || []), (rows, reload) => table({
    caption: 'Invitations',
    rows: rows.filter((i) => i.status === 'pending'),
    empty: emptyState('No pending invitations', null),
    columns: [
      { label: 'Email', render: (i) => i.email },
      { label: 'Role', render: (i) => badge(i.role, 'role') },
      { label: 'Projects', render: (i) => projectsText(i.projects) },
      { label: 'Expires', render: (i) => time(i.expires_at) },
      {
        label: 'Actions',
        render: (i) => button('Revoke', {
          kind: 'ghost', class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Revoke the invitation of ${i.email}`,
          onclick: async () => {
            try {
              await del(orgPath(`/invitations/${i.id}`));
              toast(`The invitation of ${i.email} was revoked.`);
              reload();
            } catch (err) {
              toast(errorText(err), 'error');
            }
          },
        }),
      },
    ],
  })));
  load();
  return { node: h('section', { class: 'card', 'aria-labelledby': 'inv-title' }, h('h2', { id: 'inv-title' }, 'Pending invitations'), box), reload: load };
}

async function membersPage() {
  const parts = [pageHeader('Members', { subtitle: `People in ${app.org.organization_name} and their roles.` }), membersSection()];
  if (app.atLeast('admin')) {
    const inv = invitationsSection();
    parts.push(inviteSection(inv.reload), inv.node);
  } else {
    parts.push(h('p', { class: 'notice' }, `Your role (${app.role}) cannot invite or change members; admins and owners can.`));
  }
  return h('div', parts);
}

const AREAS = ['projects', 'features', 'insights', 'persons', 'experiments', 'growth', 'webhooks', 'audit', 'keys', 'organization'];

async function keysPage() {
  const pid = app.project.id;
  const name = input({ autocomplete: 'off' });
  const days = input({ type: 'number', min: '1', max: '3650', class: 'input input-narrow', placeholder: 'never' });
  const levels = new Map();
  const scopeRows = AREAS.map((area) => {
    const options = [['', 'none']];
    if (app.can(`${area}:read`)) options.push(['read', 'read']);
    if (app.can(`${area}:write`)) options.push(['write', 'read and write']);
    const sel = select(options, area === 'features' && app.can('features:read') ? 'read' : '', { 'aria-label': `Access to ${area}` });
    levels.set(area, sel);
    return h('tr', h('th', { scope: 'row' }, area), h('td', sel));
  });
  const everything = app.atLeast('admin')
    ? h('div', { class: 'field field-inline' }, h('input', { type: 'checkbox', id: 'scope-all' }), h('label', { for: 'scope-all' }, 'Everything (*), including what is added later'))
    : null;
  const result = h('div', { 'aria-live': 'polite' });
  const listBox = h('div');
  const form = h('form', {
    class: 'form',
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      const all = everything && everything.querySelector('input').checked;
      const scopes = all ? ['*'] : AREAS.filter((a) => levels.get(a).value).map((a) => `${a}:${levels.get(a).value}`);
      const body = { name: name.value.trim(), scopes };
      if (days.value.trim()) body.expires_in_days = Number(days.value);
      const answer = await submitting(form, () => post(projectPath(pid, '/api-keys'), body), 'Creating…');
      if (!answer) return;
      mount(result, secretBox({ title: `API key “${answer.name}”`, value: answer.key, note: 'Use it as Authorization: Bearer … on /api/v1. Shown once: save it now.' }));
      name.value = '';
      loadList();
    },
  },
  formSummary(),
  h('div', { class: 'grid-2' },
    field({ label: 'Name', control: name, name: 'name', hint: 'What uses it, e.g. "CI deploys".' }),
    field({ label: 'Expires in (days)', control: days, name: 'expires_in_days', hint: 'Empty: never.' })),
  h('fieldset', { class: 'scopes', 'data-field': 'scopes', tabindex: '-1' }, h('legend', 'Scopes (restricted to this project)'),
    h('p', { class: 'hint' }, `A key never does more than your role (${app.role}) allows.`),
    everything,
    h('table', { class: 'table table-compact' }, h('caption', { class: 'visually-hidden' }, 'Access per area'),
      h('thead', h('tr', h('th', { scope: 'col' }, 'Area'), h('th', { scope: 'col' }, 'Access'))), h('tbody', scopeRows))),
  h('div', { class: 'actions' }, button('Create key', { type: 'submit', kind: 'primary' })));

  const loadList = () => mount(listBox, section(() => get(projectPath(pid, '/api-keys')).then((r) => r.results || []), (keys, reload) => table({
    caption: 'Personal API keys',
    rows: keys,
    empty: emptyState('No API keys', 'Keys you create appear here (admins see everyone’s).'),
    columns: [
      { label: 'Name', render: (k) => k.name },
      { label: 'Key', render: (k) => h('code', `${k.prefix}…`) },
      { label: 'Scopes', render: (k) => (k.scopes ? k.scopes.join(', ') : 'everything') },
      { label: 'Created', render: (k) => time(k.created_at) },
      { label: 'Last used', render: (k) => (k.last_used_at ? time(k.last_used_at) : 'never') },
      { label: 'Expires', render: (k) => (k.expires_at ? time(k.expires_at) : 'never') },
      {
        label: 'Status',
        render: (k) => (k.revoked_at ? badge('revoked', 'off') : button('Revoke', {
          kind: 'ghost', class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Revoke key ${k.name}`,
          onclick: async () => {
            if (!await confirmDialog({ title: `Revoke “${k.name}”?`, text: 'Requests with it are refused from now on.', confirm: 'Revoke', danger: true })) return;
            try {
              await del(projectPath(pid, `/api-keys/${k.id}`));
              toast(`Key “${k.name}” revoked.`);
              reload();
            } catch (err) {
              toast(errorText(err), 'error');
            }
          },
        })),
      },
    ],
  })));
  loadList();
  return h('div',
    pageHeader('Personal API keys', { subtitle: 'Secret keys for scripts and integrations calling /api/v1 on this project.' }),
    h('section', { class: 'card', 'aria-labelledby': 'newkey-title' }, h('h2', { id: 'newkey-title' }, 'Create a key'), form, result),
    h('section', { class: 'card', 'aria-labelledby': 'keys-title' }, h('h2', { id: 'keys-title' }, 'Keys'), listBox));
}

async function sdkPage() {
  const pid = app.project.id;
  const canWrite = app.can('features:write');
  const envBox = h('div');
  const connBox = h('div');
  let envs = [];
  const loadEnvs = () => mount(envBox, section(async () => {
    envs = (await get(projectPath(pid, '/environments'))).results || [];
    return envs;
  }, (rows) => table({
    caption: 'Environments',
    rows,
    empty: emptyState('No environments', null),
    columns: [
      { label: 'Key', render: (e) => h('code', e.key) },
      { label: 'Description', render: (e) => e.description || '—' },
      { label: 'Created', render: (e) => time(e.created_at) },
    ],
  })));
  const loadConns = () => mount(connBox, section(() => get(projectPath(pid, '/sdk-connections')).then((r) => r.results || []), (rows, reload) => table({
    caption: 'SDK connections',
    rows,
    empty: emptyState('No SDK connections', 'Create one to let SDKs read this project’s flags in an environment.'),
    columns: [
      { label: 'Name', render: (c) => c.name || 'Unnamed' },
      { label: 'Environment', render: (c) => c.environment },
      { label: 'Key', render: (c) => h('code', `${c.key_prefix}…`) },
      { label: 'Encrypted', render: (c) => (c.encrypted ? 'yes' : 'no') },
      { label: 'Created', render: (c) => time(c.created_at) },
      {
        label: 'Actions',
        render: (c) => (canWrite ? button('Revoke', {
          kind: 'ghost', class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Revoke connection ${c.name || c.id}`,
          onclick: async () => {
            if (!await confirmDialog({ title: 'Revoke this SDK key?', text: 'SDKs using it stop getting flags at their next request.', confirm: 'Revoke', danger: true })) return;
            try {
              await del(projectPath(pid, `/sdk-connections/${c.id}`));
              toast('SDK connection revoked.');
              reload();
            } catch (err) {
              toast(errorText(err), 'error');
            }
          },
        }) : '—'),
      },
    ],
  })));
  loadEnvs();
  loadConns();
  const parts = [pageHeader('SDK connections', { subtitle: 'Environments and the client keys SDKs use to read flags.' })];
  const connSection = h('section', { class: 'card', 'aria-labelledby': 'conn-title' }, h('h2', { id: 'conn-title' }, 'SDK connections'), connBox);
  const envSection = h('section', { class: 'card', 'aria-labelledby': 'env-title' }, h('h2', { id: 'env-title' }, 'Environments'), envBox);
  if (canWrite) {
    await envBox.firstChild.ready;
    const result = h('div', { 'aria-live': 'polite' });
    const envSel = select(envs.map((e) => e.key), 'production', { name: 'environment' });
    const name = input({ autocomplete: 'off' });
    const encrypt = h('input', { type: 'checkbox', id: uid('enc') });
    const form = h('form', {
      class: 'form',
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const answer = await submitting(form, () => post(projectPath(pid, '/sdk-connections'),
          { environment: envSel.value, name: name.value.trim(), encrypt: encrypt.checked }), 'Creating…');
        if (!answer) return;
        mount(result, secretBox({ title: `SDK key for ${answer.environment}`, value: answer.client_key, note: 'Put it in your app’s SDK configuration. Shown once: save it now.' }),
          answer.decryption_key ? secretBox({ title: 'Decryption key', value: answer.decryption_key }) : null);
        name.value = '';
        loadConns();
      },
    },
    formSummary(),
    h('div', { class: 'grid-3' },
      field({ label: 'Environment', control: envSel, name: 'environment' }),
      field({ label: 'Name', control: name, name: 'name', hint: 'e.g. "Web app".' }),
      h('div', { class: 'field field-inline field-switch' }, encrypt, h('label', { for: encrypt.id }, 'Encrypt the payload'))),
    h('div', { class: 'actions' }, button('Create SDK connection', { type: 'submit', kind: 'primary' })));
    connSection.insertBefore(h('div', h('h3', 'New connection'), form, result), connBox);

    const key = input({ autocomplete: 'off', spellcheck: 'false' });
    const description = input();
    const envForm = h('form', {
      class: 'form',
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const answer = await submitting(envForm, () => post(projectPath(pid, '/environments'), { key: key.value.trim(), description: description.value.trim() }), 'Creating…');
        if (!answer) return;
        toast(`Environment ${answer.key} created.`);
        key.value = '';
        description.value = '';
        loadEnvs();
      },
    },
    formSummary(),
    h('div', { class: 'grid-2' }, field({ label: 'Key', control: key, name: 'key' }), field({ label: 'Description', control: description, name: 'description' })),
    h('div', { class: 'actions' }, button('Add environment', { type: 'submit' })));
    envSection.insertBefore(h('div', h('h3', 'New environment'), envForm), envBox);
  }
  parts.push(connSection, envSection);
  return h('div', parts);
}

async function auditPage({ query: q }) {
  const pid = app.project.id;
  const members = await orgMembers();
  const filters = { entity_type: q.get('entity_type') || '', action: q.get('action') || '', actor: q.get('actor') || '' };
  const listBox = h('div');
  const show = () => mount(listBox, auditList(pid, filters, members, { showEntity: true }));
  const type = select([['', 'Any'], 'feature', 'environment', 'sdk_connection', 'saved_group', 'experiment', 'metric', 'rollout', 'webhook',
    'api_key', 'project', 'cohort', 'referral_program', 'reward', 'trial', 'pql_model'].map((x) => (Array.isArray(x) ? x : [x, x])), filters.entity_type);
  const action = input({ value: filters.action, placeholder: 'e.g. feature.updated', spellcheck: 'false' });
  const actor = select([['', 'Anyone'], ...members.map((m) => [`user:${m.user_id}`, m.email])], filters.actor);
  const form = h('form', {
    class: 'filters',
    role: 'search',
    'aria-label': 'Filter the audit log',
    onsubmit: (e) => {
      e.preventDefault();
      Object.assign(filters, { entity_type: type.value, action: action.value.trim(), actor: actor.value });
      history.replaceState(null, '', `${location.pathname}${query(filters)}`);
      show();
    },
  },
  field({ label: 'Entity type', control: type }),
  field({ label: 'Action', control: action }),
  field({ label: 'Actor', control: actor }),
  h('div', { class: 'field field-button' }, button('Apply filters', { type: 'submit' })));
  show();
  return h('div', pageHeader('Audit log', { subtitle: `Every change to ${app.project.name}, newest first, with what changed.` }),
    form, h('section', { class: 'card', 'aria-label': 'Entries' }, listBox));
}

async function orgAuditPage() {
  const members = await orgMembers();
  const list = h('ol', { class: 'audit' });
  const more = h('div', { class: 'actions actions-left' });
  let before = null;
  const page = async () => {
    const rows = (await get(orgPath(`/audit${query({ limit: 50, before })}`))).results || [];
    for (const e of rows) list.append(auditEntry(e, members, { showEntity: true }));
    if (rows.length === 50) {
      before = rows[rows.length - 1].id;
      mount(more, button('Show older entries', { onclick: () => page().catch((err) => mount(more, errorPanel(err))) }));
    } else mount(more);
  };
  await page();
  return h('div', pageHeader('Organization log', { subtitle: `Members, invitations, projects and sign-ins in ${app.org.organization_name}.` }),
    h('section', { class: 'card', 'aria-label': 'Entries' }, list.children.length ? [list, more] : emptyState('No entries yet', null)));
}

const PAGES = {
  members: membersPage, keys: keysPage, sdk: sdkPage, audit: auditPage, 'org-audit': orgAuditPage, project: projectSettingsPage, webhooks: webhooksPage,
};

export async function settingsPage(ctx) {
  const page = PAGES[ctx.params.tab];
  const need = {
    keys: ['keys:write', 'manage API keys'], audit: ['audit:read', 'read the audit log'], webhooks: ['webhooks:read', 'see the webhooks'],
  }[ctx.params.tab];
  if (need && !app.can(need[0]) || ctx.params.tab === 'org-audit' && !app.atLeast('admin')) {
    const what = need ? need[1] : 'read the organization log';
    return h('div', pageHeader('Not available for your role'),
      h('p', { class: 'notice', role: 'status' }, `Your role (${app.role}) cannot ${what}. Ask an admin of ${app.org.organization_name} if you need it.`));
  }
  if (!page) {
    return h('div', pageHeader('Page not found'), emptyState(`Settings have no “${ctx.params.tab}” page.`, null,
      h('a', { href: app.path('/settings/members'), class: 'btn btn-primary' }, 'Go to members')));
  }
  return page(ctx);
}

