// The dashboard's entry point: the session, the routes and the frame each route renders in.
import { whenUnauthorized } from './api.js';
import { h } from './dom.js';
import { navigate, onNotFound, onRender, render, route, start } from './router.js';
import { allProjects, clearSession, loadSession, rememberedProject, session, signOut, signedIn } from './session.js';
import { bareFrame, frameFor, selectProject } from './shell.js';
import { button, emptyState, errorPanel, pageHeader } from './ui.js';
import { acceptPage, setupPage, signInPage } from './pages/auth.js';
import { flagsPage } from './pages/flags.js';
import { flagPage } from './pages/flag.js';
import { settingsPage } from './pages/settings.js';
import { insightsPage } from './pages/insights.js';
import { dashboardPage, dashboardsPage } from './pages/dashboards.js';
import { experimentPage, experimentsPage } from './pages/experiments.js';
import { personPage, personsPage } from './pages/persons.js';
import { growthGraphPage, growthPage, invitationsPage, loopsPage, programPage, rewardsPage } from './pages/growth.js';
import { accountPage, accountsPage } from './pages/accounts.js';
import { cohortPage, cohortsPage } from './pages/cohorts.js';

const PUBLIC = new Set(['/app/signin', '/app/setup', '/app/accept']);

route('/app/signin', signInPage);
route('/app/setup', setupPage);
route('/app/accept', acceptPage);
route('/app/projects/:project/flags', flagsPage);
route('/app/projects/:project/flags/:key', flagPage);
route('/app/projects/:project/flags/:key/:tab', flagPage);
route('/app/projects/:project/settings/:tab', settingsPage);
route('/app/projects/:project/insights', insightsPage);
route('/app/projects/:project/dashboards', dashboardsPage);
route('/app/projects/:project/dashboards/:key', dashboardPage);
route('/app/projects/:project/experiments', experimentsPage);
route('/app/projects/:project/experiments/:key', experimentPage);
route('/app/projects/:project/persons', personsPage);
route('/app/projects/:project/persons/:id', personPage);
route('/app/projects/:project/growth', growthPage);
route('/app/projects/:project/growth/programs/:key', programPage);
route('/app/projects/:project/growth/rewards', rewardsPage);
route('/app/projects/:project/growth/loops', loopsPage);
route('/app/projects/:project/growth/invitations', invitationsPage);
route('/app/projects/:project/growth/graph', growthGraphPage);
route('/app/projects/:project/accounts', accountsPage);
route('/app/projects/:project/cohorts', cohortsPage);
route('/app/projects/:project/cohorts/:id', cohortPage);
route('/app/projects/:project/accounts/:type/:key', accountPage);

onNotFound((pathname) => h('div', pageHeader('Page not found'),
  emptyState(`Nothing lives at ${pathname}.`, 'Check the address, or go back to the feature flags.',
    h('a', { href: '/app', class: 'btn btn-primary' }, 'Go to the dashboard'))));

/** Where `/` and `/app` go: the remembered project, else the first one. */
async function home() {
  const projects = await allProjects();
  const remembered = rememberedProject();
  const pick = projects.find((p) => remembered && p.project.id === remembered.project) || projects[0];
  return pick ? `/app/projects/${pick.project.id}/flags` : null;
}

onRender(async (_match, loc) => {
  const { pathname } = loc;
  if (PUBLIC.has(pathname)) return bareFrame();
  if (!signedIn()) {
    const next = pathname.startsWith('/app/projects/') ? `?next=${encodeURIComponent(pathname + location.search)}` : '';
    navigate(`/app/signin${next}`, { replace: true });
    return null;
  }
  if (pathname === '/' || pathname === '/app' || pathname === '/app/' || /^\/app\/projects\/[^/]+\/?$/.test(pathname)) {
    const target = await home().catch(() => null);
    if (target) {
      navigate(target, { replace: true });
      return null;
    }
    const main = bareFrame();
    main.append(pageHeader('No projects yet'),
      emptyState('You are not a member of any project.', 'Ask an admin of your organization to invite you or to give you access to a project.',
        button('Sign out', { onclick: async () => { await signOut().catch(() => {}); navigate('/app/signin', { replace: true }); } })));
    document.documentElement.setAttribute('data-ready', '0');
    return null;
  }
  const projectMatch = /^\/app\/projects\/([^/]+)/.exec(pathname);
  if (projectMatch) {
    let ok = false;
    try {
      ok = await selectProject(projectMatch[1]);
    } catch (err) {
      bareFrame().append(errorPanel(err, () => render()));
      return null;
    }
    if (!ok) {
      const main = bareFrame();
      main.append(pageHeader('Project not found'),
        emptyState(`Project ${projectMatch[1]} does not exist or you cannot open it.`, null,
          h('a', { href: '/app', class: 'btn btn-primary' }, 'Go to your projects')));
      document.documentElement.setAttribute('data-ready', '0');
      return null;
    }
  }
  return frameFor(pathname);
});

whenUnauthorized(() => {
  if (!session.user) return;
  clearSession();
  const next = encodeURIComponent(location.pathname + location.search);
  navigate(`/app/signin?expired=1&next=${next}`, { replace: true });
});

async function boot() {
  try {
    await loadSession();
  } catch (err) {
    const main = bareFrame();
    main.append(pageHeader('Flywheel is not answering'), errorPanel(err, () => location.reload()));
    return;
  }
  await start();
}

boot();
