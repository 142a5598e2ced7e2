// Who is signed in, their organizations and roles, and the project being looked at (remembered in localStorage).
import { get, post, setCsrf } from './api.js';

// What each role may do, as the server's scopes (crates/server/src/auth.rs, `Role::scopes`). The UI only hides
// what a role cannot do; the server decides.
const ROLE_SCOPES = {
  viewer: ['organization:read', 'projects:read', 'features:read', 'insights:read', 'persons:read', 'experiments:read', 'growth:read'],
  member: ['organization:read', 'projects:read', 'features:write', 'insights:write', 'persons:read', 'experiments:write',
    'growth:write', 'webhooks:read', 'audit:read', 'keys:write'],
  admin: null,
  owner: null,
};
export const ROLES = ['viewer', 'member', 'admin', 'owner'];

export const session = {
  user: null,
  organizations: [],
  csrf: null,
};

export function signedIn() {
  return Boolean(session.user);
}

/** Takes the answer of login, setup, accept-invitation or me. */
export function setSession(answer) {
  session.user = answer && answer.user ? answer.user : null;
  session.organizations = (answer && answer.organizations) || [];
  session.csrf = (answer && answer.csrf_token) || null;
  setCsrf(session.csrf);
}

export function clearSession() {
  setSession(null);
}

/** Loads the session from `GET /api/v1/auth/me`; false when nobody is signed in. */
export async function loadSession() {
  try {
    setSession(await get('/api/v1/auth/me', { auth: false }));
    return signedIn();
  } catch (err) {
    if (err.status === 401) {
      clearSession();
      return false;
    }
    throw err;
  }
}

export async function signOut() {
  try {
    await post('/api/v1/auth/logout', undefined, { auth: false });
  } finally {
    clearSession();
  }
}

export function membership(orgId) {
  return session.organizations.find((m) => m.organization_id === Number(orgId)) || null;
}

export function roleIn(orgId) {
  const m = membership(orgId);
  return m ? m.role : null;
}

/** Whether `role` grants `scope` (`features:write`, …); write includes read. */
export function roleGrants(role, scope) {
  if (!role || !(role in ROLE_SCOPES)) return false;
  const scopes = ROLE_SCOPES[role];
  if (scopes === null) return true;
  const [area, level] = scope.split(':');
  return scopes.includes(scope) || (level === 'read' && scopes.includes(`${area}:write`));
}

export function roleAtLeast(role, least) {
  return ROLES.indexOf(role) >= ROLES.indexOf(least);
}

const PROJECT_KEY = 'flywheel.project';

export function rememberProject(orgId, projectId) {
  try {
    localStorage.setItem(PROJECT_KEY, JSON.stringify({ org: Number(orgId), project: Number(projectId) }));
  } catch {
    // Storage may be disabled; the switcher still works for this page.
  }
}

export function rememberedProject() {
  try {
    const v = JSON.parse(localStorage.getItem(PROJECT_KEY) || 'null');
    return v && Number.isInteger(v.project) ? v : null;
  } catch {
    return null;
  }
}

const projectCache = new Map();

/** The projects of an organization the user may open (cached for the page's life; `fresh` reloads). */
export async function projectsOf(orgId, fresh = false) {
  if (!fresh && projectCache.has(orgId)) return projectCache.get(orgId);
  const answer = await get(`/api/v1/organizations/${orgId}/projects`);
  const list = answer.results || [];
  projectCache.set(orgId, list);
  return list;
}

/** Every project the user may open, with its organization: [{org, project}]. */
export async function allProjects() {
  const out = [];
  for (const m of session.organizations) {
    for (const p of await projectsOf(m.organization_id)) out.push({ org: m, project: p });
  }
  return out;
}
