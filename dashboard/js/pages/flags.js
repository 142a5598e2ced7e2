// The feature flag list: search, filters (tag, environment state, archived) and the last change of each flag; and the
// form that creates a flag.
import { get, post, projectPath, query as qs } from '../api.js';
import { h, mount, uid } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import { actorText, time } from '../format.js';
import { defaultValueFor, environmentStates, VALUE_TYPES } from '../flags/model.js';
import { valueControl } from '../flags/controls.js';
import {
  badge, button, clearErrors, emptyState, field, formSummary, input, pageHeader, select, showErrors, submitting, table,
} from '../ui.js';

export function flagPath(key, tab = '') {
  return app.path(`/flags/${encodeURIComponent(key)}${tab ? `/${tab}` : ''}`);
}

/** The members of the current organization (for naming audit actors); empty when they cannot be read. */
export async function orgMembers() {
  try {
    return (await get(`/api/v1/organizations/${app.org.organization_id}/members`)).results || [];
  } catch {
    return [];
  }
}

function createForm(onCancel) {
  const draft = { key: '', value_type: 'boolean', default_value: false, description: '', tags: '' };
  let problem = null;
  const key = input({ name: 'key', autocomplete: 'off', spellcheck: 'false', required: true });
  const description = input({ name: 'description' });
  const tags = input({ name: 'tags', autocomplete: 'off' });
  const valueBox = h('div');
  const renderValue = () => {
    problem = null;
    mount(valueBox, field({
      label: 'Default value',
      name: 'default_value',
      hint: 'Served when no rule matches, and in environments where the flag is on without rules.',
      control: valueControl(draft.value_type, draft.default_value, (v, p) => {
        problem = p || null;
        if (!p) draft.default_value = v;
      }),
    }));
  };
  const type = select(VALUE_TYPES, draft.value_type, {
    name: 'value_type',
    onchange: (e) => {
      draft.value_type = e.target.value;
      draft.default_value = defaultValueFor(draft.value_type);
      renderValue();
    },
  });
  renderValue();
  const form = h('form', {
    class: 'form card',
    novalidate: true,
    'aria-labelledby': 'new-flag-title',
    onsubmit: async (e) => {
      e.preventDefault();
      clearErrors(form);
      if (problem) {
        showErrors(form, { status: 400, errors: [{ field: 'default_value', message: problem }] });
        return;
      }
      const body = {
        key: key.value.trim(),
        value_type: draft.value_type,
        default_value: draft.default_value,
        description: description.value.trim(),
        tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
        environments: {},
      };
      const created = await submitting(form, () => post(projectPath(app.project.id, '/features'), body), 'Creating…');
      if (created) navigate(flagPath(created.key));
    },
  },
  h('h2', { id: 'new-flag-title' }, 'New feature flag'),
  formSummary(),
  h('div', { class: 'grid-2' },
    field({ label: 'Key', control: key, name: 'key', hint: 'What code asks for: letters, digits and - _ . : | / (at most 100).' }),
    field({ label: 'Value type', control: type, name: 'value_type' })),
  valueBox,
  field({ label: 'Description', control: description, name: 'description' }),
  field({ label: 'Tags', control: tags, name: 'tags', hint: 'Comma-separated, e.g. checkout, team-growth.' }),
  h('div', { class: 'actions' },
    button('Create flag', { type: 'submit', kind: 'primary' }),
    button('Cancel', { onclick: onCancel })));
  return form;
}

export async function flagsPage({ query }) {
  const pid = app.project.id;
  const canWrite = app.can('features:write');
  const [features, envs, audit, members] = await Promise.all([
    get(projectPath(pid, '/features?include_archived=true')).then((r) => r.results || []),
    get(projectPath(pid, '/environments')).then((r) => r.results || []),
    app.can('audit:read')
      ? get(projectPath(pid, `/audit${qs({ entity_type: 'feature', limit: 500 })}`)).then((r) => r.results || []).catch(() => [])
      : Promise.resolve([]),
    orgMembers(),
  ]);
  // The newest audit entry per feature names who changed it last.
  const lastChange = new Map();
  for (const entry of audit) if (!lastChange.has(entry.entity_id)) lastChange.set(entry.entity_id, entry);

  const filters = {
    q: query.get('q') || '',
    tag: query.get('tag') || '',
    env: query.get('env') || '',
    state: query.get('state') || '',
    status: query.get('status') || 'active',
  };
  const tags = [...new Set(features.flatMap((f) => f.tags || []))].sort();

  const results = h('div');
  const count = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });

  const applyFilters = () => {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v && !(k === 'status' && v === 'active')) params.set(k, v);
    const search = params.toString();
    history.replaceState(null, '', `${location.pathname}${search ? `?${search}` : ''}`);
    const needle = filters.q.trim().toLowerCase();
    const shown = features.filter((f) => {
      if (filters.status === 'active' && f.archived) return false;
      if (filters.status === 'archived' && !f.archived) return false;
      if (needle && !`${f.key} ${f.description || ''} ${(f.tags || []).join(' ')}`.toLowerCase().includes(needle)) return false;
      if (filters.tag && !(f.tags || []).includes(filters.tag)) return false;
      if (filters.env) {
        const on = Boolean(f.environments && f.environments[filters.env] && f.environments[filters.env].enabled);
        if (filters.state === 'on' && !on) return false;
        if (filters.state === 'off' && on) return false;
      }
      return true;
    });
    count.textContent = `${shown.length} of ${features.length} flag${features.length === 1 ? '' : 's'} shown`;
    const empty = features.length === 0
      ? emptyState('No feature flags yet', canWrite ? 'Create the first one: it is off everywhere until you enable it in an environment.'
        : 'Nobody has created a flag in this project yet.')
      : emptyState('No flags match these filters', 'Change the search or the filters.',
        button('Clear filters', {
          onclick: () => {
            Object.assign(filters, { q: '', tag: '', env: '', state: '', status: 'active' });
            mount(controlsBox, controls());
            applyFilters();
          },
        }));
    mount(results, table({
      caption: 'Feature flags',
      rows: shown,
      empty,
      columns: [
        {
          label: 'Flag',
          render: (f) => h('div', h('a', { href: flagPath(f.key), class: 'flag-key' }, f.key),
            f.description ? h('p', { class: 'muted small' }, f.description) : null),
        },
        { label: 'Type', render: (f) => f.value_type },
        {
          label: 'Environments',
          render: (f) => h('ul', { class: 'inline-list' }, environmentStates(f, envs).map((e) => h('li',
            badge(`${e.key}: ${e.enabled ? 'on' : 'off'}`, e.enabled ? 'on' : 'off')))),
        },
        { label: 'Tags', render: (f) => ((f.tags || []).length ? h('ul', { class: 'inline-list' }, f.tags.map((t) => h('li', badge(t, 'tag')))) : '—') },
        {
          label: 'Last change',
          render: (f) => {
            const entry = lastChange.get(f.key);
            return h('div', time(f.updated_at),
              h('p', { class: 'muted small' }, `v${f.version}${entry ? ` by ${actorText(entry.actor, members)}` : ''}`));
          },
        },
        { label: 'Status', render: (f) => (f.archived ? badge('archived', 'off') : badge('active', 'neutral')) },
      ],
    }));
  };

  const controls = () => {
    const search = input({
      type: 'search', value: filters.q, placeholder: 'Key, description or tag', autocomplete: 'off',
      oninput: (e) => { filters.q = e.target.value; applyFilters(); },
    });
    const tag = select([['', 'All tags'], ...tags], filters.tag, { onchange: (e) => { filters.tag = e.target.value; applyFilters(); } });
    const stateSel = select([['', 'On or off'], ['on', 'On'], ['off', 'Off']], filters.state, {
      disabled: !filters.env,
      onchange: (e) => { filters.state = e.target.value; applyFilters(); },
    });
    const env = select([['', 'Any environment'], ...envs.map((e) => e.key)], filters.env, {
      onchange: (e) => {
        filters.env = e.target.value;
        stateSel.disabled = !filters.env;
        if (!filters.env) { filters.state = ''; stateSel.value = ''; }
        applyFilters();
      },
    });
    const status = select([['active', 'Active'], ['archived', 'Archived'], ['all', 'All']], filters.status, {
      onchange: (e) => { filters.status = e.target.value; applyFilters(); },
    });
    return h('div', { class: 'filters', role: 'search', 'aria-label': 'Filter flags' },
      field({ label: 'Search', control: search }),
      field({ label: 'Tag', control: tag }),
      field({ label: 'Environment', control: env }),
      field({ label: 'State there', control: stateSel }),
      field({ label: 'Status', control: status }));
  };
  const controlsBox = h('div', controls());

  const createBox = h('div', { id: uid('create') });
  let newButton = null;
  if (canWrite) {
    newButton = button('New flag', {
      kind: 'primary',
      'aria-expanded': 'false',
      'aria-controls': createBox.id,
      onclick: () => {
        const open = newButton.getAttribute('aria-expanded') === 'true';
        newButton.setAttribute('aria-expanded', String(!open));
        if (open) {
          mount(createBox);
        } else {
          mount(createBox, createForm(() => {
            newButton.setAttribute('aria-expanded', 'false');
            mount(createBox);
            newButton.focus();
          }));
          createBox.querySelector('input').focus();
        }
      },
    });
  }
  applyFilters();
  return h('div',
    pageHeader('Feature flags', { subtitle: `${app.project.name}: release features by environment, audience and percentage.`, actions: newButton }),
    createBox,
    controlsBox,
    count,
    results);
}
