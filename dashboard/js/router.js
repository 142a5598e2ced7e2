// Client-side routing with the History API: `/app/...` paths map to page functions. A page is
// `async (ctx) → Node`; the router shows a loading state meanwhile, an error panel when it throws, moves focus to the
// new page's heading, sets the document title and marks the page ready (`data-ready` and a `fw-ready` performance
// mark, which the browser tests and the load-time measurement read).
import { mount } from './dom.js';
import { errorPanel, loading } from './ui.js';

const routes = [];
let renderHook = null;
let notFound = null;
let seq = 0;

/** `pattern`: `/app/projects/:project/flags/:key`; parameters are decoded. */
export function route(pattern, handler) {
  const names = [];
  const source = pattern.replace(/:(\w+)/g, (_, n) => {
    names.push(n);
    return '([^/]+)';
  });
  routes.push({ pattern, regex: new RegExp(`^${source}/?$`), names, handler });
}

export function match(pathname) {
  for (const r of routes) {
    const m = r.regex.exec(pathname);
    if (m) {
      const params = {};
      r.names.forEach((n, i) => {
        try {
          params[n] = decodeURIComponent(m[i + 1]);
        } catch {
          params[n] = m[i + 1];
        }
      });
      return { route: r, params };
    }
  }
  return null;
}

/**
 * `hook(match, location)` renders the frame for a route and returns the element that receives the page
 * (or null when it handled everything itself, e.g. a redirect).
 */
export function onRender(hook) {
  renderHook = hook;
}

/** The page of paths no route matches: `handler(pathname)`. */
export function onNotFound(handler) {
  notFound = handler;
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render({ focus: true });
}

function current() {
  return { pathname: location.pathname, query: new URLSearchParams(location.search) };
}

/** Renders the current location. */
export async function render({ focus = false } = {}) {
  const mySeq = ++seq;
  const loc = current();
  const m = match(loc.pathname) || { route: { handler: () => notFound(loc.pathname) }, params: {} };
  const target = await renderHook(m, loc);
  if (!target || mySeq !== seq) return;
  const slow = setTimeout(() => {
    if (mySeq === seq) mount(target, loading());
  }, 120);
  target.setAttribute('aria-busy', 'true');
  document.documentElement.removeAttribute('data-ready');
  let node;
  try {
    node = await m.route.handler({ params: m.params, query: loc.query, pathname: loc.pathname });
  } catch (err) {
    node = errorPanel(err, () => render({ focus: true }));
  }
  clearTimeout(slow);
  if (mySeq !== seq) return;
  if (node) mount(target, node);
  // Sections loading on their own count as part of the page.
  const parts = [...target.querySelectorAll('.section-body')].map((el) => el.ready).filter(Boolean);
  await Promise.allSettled(parts);
  if (mySeq !== seq) return;
  target.setAttribute('aria-busy', 'false');
  const h1 = target.querySelector('h1');
  document.title = h1 ? `${h1.textContent} · Flywheel` : 'Flywheel';
  if (focus && h1) h1.focus();
  document.documentElement.setAttribute('data-ready', String(mySeq));
  performance.mark('fw-ready');
}

/** Follows same-origin `/app` links without reloading the page (modified clicks open tabs as usual). */
export function start() {
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.target.closest('a[href]');
    if (!a || a.target || a.hasAttribute('download')) return;
    // An SVG link's `href` is an SVGAnimatedString.
    const url = new URL(typeof a.href === 'string' ? a.href : a.href.baseVal, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith('/app')) return;
    if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
    e.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener('popstate', () => render({ focus: true }));
  return render();
}
