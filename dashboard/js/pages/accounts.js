// Accounts (groups): the search (by key or name, per group type) and an account's page — properties, members,
// invitations (invite, resend, revoke: members of the project) and its PQL scores from account models.
import { get, post, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { exact, time, valueText } from '../format.js';
import {
  badge, button, emptyState, field, formSummary, input, pageHeader, secretBox, section, select, submitting,
  table, toast,
} from '../ui.js';
import { num } from '../insights/charts.js';
import { personLabel, personPath, pqlScores } from './persons.js';

export const accountPath = (type, key) => app.path(`/accounts/${encodeURIComponent(type)}/${encodeURIComponent(key)}`);

const accountLabel = (g) => (g.properties && typeof g.properties.name === 'string' && g.properties.name) || g.group_key;

export async function accountsPage({ query }) {
  const pid = app.project.id;
  let term = query.get('search') || '';
  let type = query.get('type') || '';
  const status = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const typeSel = select([['', 'All types']], type, { name: 'type' });
  const results = section(() => get(projectPath(pid, `/groups${qs({ search: term.trim(), type, limit: 100 })}`)), (r) => {
    const types = r.group_types || [];
    if (typeSel.options.length !== types.length + 1) {
      mount(typeSel, h('option', { value: '' }, 'All types'), types.map((t) => h('option', { value: t.group_type }, t.group_type)));
      typeSel.value = type;
    }
    const rows = r.results || [];
    status.textContent = term.trim() ? `${rows.length} account${rows.length === 1 ? '' : 's'} match “${term.trim()}”${rows.length === 100 ? ' (the first 100)' : ''}`
      : `${rows.length} account${rows.length === 1 ? '' : 's'}${rows.length === 100 ? ' (the 100 with most members)' : ''}`;
    return table({
      caption: 'Accounts',
      rows,
      empty: emptyState(term.trim() ? 'No account matches' : 'No accounts yet',
        types.length ? 'Search by part of an account key or name.' : 'Accounts appear when events name a group ($groups) or a group is identified ($groupidentify).'),
      columns: [
        { label: 'Account', render: (g) => h('a', { href: accountPath(g.group_type, g.group_key) }, accountLabel(g)) },
        { label: 'Type', render: (g) => g.group_type },
        { label: 'Key', render: (g) => h('code', g.group_key) },
        { label: 'Members', render: (g) => h('span', { 'data-members': String(g.members) }, num(g.members)) },
        { label: 'First seen', render: (g) => (g.created_at ? time(g.created_at) : h('span', { class: 'muted' }, 'not identified')) },
      ],
    });
  });
  const search = input({ type: 'search', name: 'search', value: term, autocomplete: 'off', spellcheck: 'false', placeholder: 'Key or name' });
  const form = h('form', {
    class: 'form search-form', role: 'search', 'aria-label': 'Accounts',
    onsubmit: (e) => {
      e.preventDefault();
      term = search.value;
      type = typeSel.value;
      history.replaceState(null, '', `${location.pathname}${qs({ search: term.trim(), type })}`);
      results.reload();
    },
  }, field({ label: 'Search accounts', name: 'search', control: search }), field({ label: 'Group type', name: 'type', control: typeSel }),
  button('Search', { type: 'submit', kind: 'primary' }));
  return h('div', pageHeader('Accounts', { subtitle: 'The companies, teams and workspaces your persons belong to.' }), form, status, results);
}

/** An account's invitations: the list with resend and revoke, and the form to invite someone (members of the project). */
export function accountInvitations(pid, type, key) {
  const canWrite = app.can('growth:write');
  const base = `/groups/${encodeURIComponent(type)}/${encodeURIComponent(key)}/invitations`;
  const tokenBox = h('div');
  const listBox = h('div');
  const act = async (inv, action) => {
    try {
      const r = await post(projectPath(pid, `/invitations/${inv.id}/${action}`));
      toast(action === 'resend' ? `A new link for ${inv.email}${r && r.token ? ' is shown below' : ''}.` : `Invitation for ${inv.email} revoked.`);
      if (r && r.token) mount(tokenBox, secretBox({ title: `Invitation token for ${inv.email}`, value: r.token, note: 'Shown once: the old token no longer works.' }));
      mount(listBox, list());
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  const list = () => section(() => get(projectPath(pid, base)).then((r) => r.results || []), (rows) => table({
    caption: `Invitations to ${key}`,
    rows,
    empty: h('p', { class: 'empty-inline' }, 'No invitations to this account.'),
    columns: [
      { label: 'Email', render: (i) => i.email },
      { label: 'Invited by', render: (i) => h('a', { href: personPath(i.inviter) }, i.inviter) },
      { label: 'Role', render: (i) => i.role },
      { label: 'Status', render: (i) => h('div', badge(i.status, i.status === 'accepted' ? 'on' : i.status === 'pending' ? 'neutral' : 'off'), i.accepted_by ? h('p', { class: 'muted small' }, 'by ', h('a', { href: personPath(i.accepted_by) }, i.accepted_by)) : null) },
      { label: 'Expires', render: (i) => time(i.expires_at) },
      canWrite ? {
        label: 'Actions',
        render: (i) => (i.status === 'pending' || i.status === 'expired' ? h('div', { class: 'actions actions-left' },
          button('Resend', { class: 'btn btn-secondary btn-small', 'aria-label': `Resend the invitation to ${i.email}`, onclick: () => act(i, 'resend') }),
          i.status === 'pending' ? button('Revoke', { class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Revoke the invitation to ${i.email}`, onclick: () => act(i, 'revoke') }) : null) : '—'),
      } : null,
    ].filter(Boolean),
  }));
  mount(listBox, list());
  let inviteForm = null;
  if (canWrite) {
    const email = input({ type: 'email', name: 'email', autocomplete: 'off' });
    const inviter = input({ name: 'inviter', autocomplete: 'off', spellcheck: 'false' });
    const role = input({ name: 'role', value: 'member' });
    inviteForm = h('form', {
      class: 'form', novalidate: true, 'aria-labelledby': 'invite-title',
      onsubmit: async (e) => {
        e.preventDefault();
        const made = await submitting(inviteForm, () => post(projectPath(pid, base), { email: email.value.trim(), inviter: inviter.value.trim(), role: role.value.trim() }), 'Inviting…');
        if (made) {
          mount(tokenBox, secretBox({ title: `Invitation token for ${made.email}`, value: made.token, note: 'Shown once: send it to the invitee (your product accepts it with POST …/invitations/accept).' }));
          email.value = '';
          mount(listBox, list());
        }
      },
    },
    h('h3', { id: 'invite-title' }, 'Invite to this account'),
    formSummary(),
    h('div', { class: 'grid-3' },
      field({ label: 'Email', name: 'email', control: email }),
      field({ label: 'Inviter (distinct id)', name: 'inviter', control: inviter, hint: 'Credited in the growth graph.' }),
      field({ label: 'Role', name: 'role', control: role })),
    h('div', { class: 'actions actions-left' }, button('Invite', { type: 'submit', kind: 'primary' })));
  }
  return h('div', inviteForm, tokenBox, listBox);
}

export async function accountPage({ params }) {
  const pid = app.project.id;
  const { type, key } = params;
  const g = await get(projectPath(pid, `/groups/${encodeURIComponent(type)}/${encodeURIComponent(key)}${qs({ members_limit: 200 })}`));
  const members = g.member_list || [];
  const props = Object.entries(g.properties || {}).sort(([a], [b]) => a.localeCompare(b));
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/accounts') }, 'Accounts')),
    pageHeader(accountLabel(g), {
      subtitle: `${type} ${key} · ${num(g.members)} member${g.members === 1 ? '' : 's'}${g.created_at ? ` · first seen ${exact(g.created_at)}` : ' · never identified'}`,
    }),
    h('div', { class: 'grid-2' },
      h('section', { class: 'card', 'aria-labelledby': 'a-props' }, h('h2', { id: 'a-props' }, 'Properties'),
        table({
          caption: 'Properties', rows: props, empty: h('p', { class: 'empty-inline' }, 'No properties (identify the group with $groupidentify).'),
          columns: [
            { label: 'Property', render: ([k]) => h('code', k) },
            { label: 'Value', render: ([, v]) => (typeof v === 'string' ? v : valueText(v)) },
          ],
        })),
      h('section', { class: 'card', 'aria-labelledby': 'a-pql' }, h('h2', { id: 'a-pql' }, 'PQL score'), pqlScores(pid, key, (m) => m.unit === type, `No PQL model scores ${type} accounts.`))),
    h('section', { class: 'card', 'aria-labelledby': 'a-members' }, h('h2', { id: 'a-members' }, 'Members'),
      h('p', { class: 'muted small' }, g.members > members.length ? `The ${members.length} newest of ${num(g.members)}.` : `Persons whose events name this account.`),
      table({
        caption: 'Members', rows: members, empty: h('p', { class: 'empty-inline' }, 'No person is linked to this account.'),
        columns: [
          { label: 'Person', render: (p) => h('a', { href: personPath(p.distinct_ids[0]) }, personLabel(p)) },
          { label: 'Distinct ids', render: (p) => h('ul', { class: 'inline-list' }, p.distinct_ids.slice(0, 3).map((d) => h('li', h('code', d))), p.distinct_ids.length > 3 ? h('li', { class: 'muted small' }, `+${p.distinct_ids.length - 3}`) : null) },
          { label: 'First seen', render: (p) => time(p.created_at) },
        ],
      })),
    h('section', { class: 'card', 'aria-labelledby': 'a-inv' }, h('h2', { id: 'a-inv' }, 'Invitations'), accountInvitations(pid, type, key)));
}

/** `/growth/invitations`: invitations to every account, newest first, by status, with paging. */
export function projectInvitations(pid, status) {
  const rows = [];
  let before = null;
  const body = h('div');
  const more = button('Load older invitations', { class: 'btn btn-secondary btn-small' });
  const draw = () => mount(body, table({
    caption: 'Invitations',
    rows,
    empty: emptyState(status ? `No ${status} invitations` : 'No invitations yet', 'Invite someone to an account from its page (Accounts).'),
    columns: [
      { label: 'Account', render: (i) => h('a', { href: accountPath(i.group_type, i.group_key) }, i.group_key) },
      { label: 'Email', render: (i) => i.email },
      { label: 'Invited by', render: (i) => h('a', { href: personPath(i.inviter) }, i.inviter) },
      { label: 'Status', render: (i) => h('div', badge(i.status, i.status === 'accepted' ? 'on' : i.status === 'pending' ? 'neutral' : 'off'), i.accepted_by ? h('p', { class: 'muted small' }, 'by ', h('a', { href: personPath(i.accepted_by) }, i.accepted_by)) : null) },
      { label: 'Sent', render: (i) => time(i.created_at) },
    ],
  }), more);
  const load = async () => {
    const r = await get(projectPath(pid, `/invitations${qs({ status, before_id: before, limit: 100 })}`));
    rows.push(...(r.results || []));
    before = r.next_before_id;
    more.hidden = !before;
    draw();
  };
  more.addEventListener('click', () => load().catch((err) => toast(err.message, 'error')));
  return section(load, () => body);
}

/** Filters of the project's invitation list, as a form that changes the address. */
export function invitationFilter(status, basePath) {
  const sel = select([['', 'Any status'], 'pending', 'accepted', 'revoked', 'expired'], status, {
    name: 'status',
    onchange: (e) => navigate(`${basePath}${qs({ status: e.target.value })}`),
  });
  return h('form', { class: 'form search-form', 'aria-label': 'Invitation filters', onsubmit: (e) => e.preventDefault() },
    field({ label: 'Status', name: 'status', control: sel }));
}
