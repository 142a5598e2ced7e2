// The frame around signed-in pages: skip link, top bar with the organization/project switcher and the user, the
// navigation, and the <main> that pages render into. Also the current project context every page reads (`app`).
import { h, mount } from './dom.js';
import { navigate } from './router.js';
import { allProjects, rememberProject, roleAtLeast, roleGrants, session, signOut } from './session.js';
import { badge, button, toast } from './ui.js';

/** The project being looked at, its organization membership and the user's role there. */
export const app = {
  project: null,
  org: null,
  role: null,
  projects: [],
  /** Whether the user's role grants `scope` (e.g. `features:write`) in the current organization. */
  can(scope) {
    return roleGrants(this.role, scope);
  },
  atLeast(role) {
    return roleAtLeast(this.role, role);
  },
  /** A dashboard path in the current project: `app.path('/flags')`. */
  path(rest = '') {
    return `/app/projects/${this.project.id}${rest}`;
  },
};

/**
 * The navigation; `need` hides an entry
 * from roles without that scope, `role` from roles below it.
 */
export const NAV = [
  { section: 'Release', items: [{ label: 'Feature flags', path: '/flags' }, { label: 'Experiments', path: '/experiments', need: 'experiments:read' }] },
  {
    section: 'Analytics',
    items: [
      { label: 'Insights', path: '/insights', need: 'insights:read' },
      { label: 'Dashboards', path: '/dashboards', need: 'insights:read' },
      { label: 'Persons', path: '/persons', need: 'persons:read' },
      { label: 'Accounts', path: '/accounts', need: 'growth:read' },
      { label: 'Cohorts', path: '/cohorts', need: 'insights:read' },
    ],
  },
  { section: 'Growth', items: [{ label: 'Growth', path: '/growth', need: 'growth:read' }] },
  {
    section: 'Settings',
    items: [
      { label: 'Project', path: '/settings/project' },
      { label: 'Members', path: '/settings/members' },
      { label: 'API keys', path: '/settings/keys', need: 'keys:write' },
      { label: 'SDK connections', path: '/settings/sdk' },
      { label: 'Webhooks', path: '/settings/webhooks', need: 'webhooks:read' },
      { label: 'Audit log', path: '/settings/audit', need: 'audit:read' },
      { label: 'Organization log', path: '/settings/org-audit', role: 'admin' },
    ],
  },
];

let frame = null;

function visible(item) {
  return (!item.need || app.can(item.need)) && (!item.role || app.atLeast(item.role));
}

function navigation(pathname) {
  return h('nav', { class: 'sidenav', 'aria-label': 'Main' },
    NAV.map((group) => {
      const items = group.items.filter(visible);
      if (!items.length) return null;
      return h('div', { class: 'nav-group' },
        h('p', { class: 'nav-heading', id: `nav-${group.section.toLowerCase()}` }, group.section),
        h('ul', { 'aria-labelledby': `nav-${group.section.toLowerCase()}` }, items.map((item) => {
          const href = app.path(item.path);
          const current = pathname === href || pathname.startsWith(`${href}/`);
          return h('li', h('a', { href, class: 'nav-link', 'aria-current': current ? 'page' : undefined }, item.label));
        })));
    }));
}

function switcher(pathname) {
  const id = 'project-switcher';
  const groups = new Map();
  for (const { org, project } of app.projects) {
    if (!groups.has(org.organization_id)) groups.set(org.organization_id, { org, projects: [] });
    groups.get(org.organization_id).projects.push(project);
  }
  const sel = h('select', {
    id,
    class: 'input select switcher-select',
    onchange: (e) => {
      const next = Number(e.target.value);
      const entry = app.projects.find((p) => p.project.id === next);
      if (!entry) return;
      rememberProject(entry.org.organization_id, next);
      // Stay in the same section of the dashboard (a list, not an item of the other project).
      const rest = pathname.replace(/^\/app\/projects\/[^/]+/, '');
      const section = rest.startsWith('/settings/') ? rest : `/${rest.split('/')[1] || 'flags'}`;
      navigate(`/app/projects/${next}${section}`);
    },
  }, [...groups.values()].map(({ org, projects }) => h('optgroup', { label: org.organization_name || `Organization ${org.organization_id}` },
    projects.map((p) => h('option', { value: p.id, selected: p.id === app.project.id }, p.name)))));
  return h('div', { class: 'switcher' }, h('label', { for: id, class: 'switcher-label' }, 'Project'), sel);
}

function topbar(pathname) {
  return h('header', { class: 'topbar' },
    h('a', { href: app.path('/flags'), class: 'brand' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }), 'Flywheel'),
    switcher(pathname),
    h('div', { class: 'user' },
      h('span', { class: 'user-email' }, session.user.email),
      badge(app.role, 'role'),
      button('Sign out', {
        kind: 'ghost',
        onclick: async () => {
          try {
            await signOut();
          } catch {
            toast('The server did not confirm the sign-out; the session is forgotten here.', 'info');
          }
          navigate('/app/signin', { replace: true });
        },
      })));
}

/** Renders the signed-in frame for the current project; returns the <main> to render the page into. */
export function frameFor(pathname) {
  const main = h('main', { id: 'main', tabindex: '-1', class: 'main' });
  frame = h('div', { class: 'frame' },
    h('a', { href: '#main', class: 'skip-link' }, 'Skip to content'),
    topbar(pathname),
    h('div', { class: 'layout' }, navigation(pathname), main));
  mount(document.getElementById('app'), frame);
  return main;
}

/** The frame of signed-out pages (sign-in, setup, invitation): a centred card. */
export function bareFrame() {
  frame = null;
  const main = h('main', { id: 'main', tabindex: '-1', class: 'bare' });
  mount(document.getElementById('app'), h('div', { class: 'bare-frame' },
    h('header', h('p', { class: 'brand brand-bare' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }), 'Flywheel')), main));
  return main;
}

/** Loads the projects the user may open and picks `projectId` (or the remembered one, or the first). */
export async function selectProject(projectId) {
  app.projects = await allProjects();
  const entry = app.projects.find((p) => p.project.id === Number(projectId));
  if (!entry) return false;
  app.project = entry.project;
  app.org = entry.org;
  app.role = entry.org.role;
  rememberProject(entry.org.organization_id, entry.project.id);
  return true;
}
