// The native API, with the session cookie: every change sends the session's CSRF token; errors become ApiError with
// the API's shape `{code, message, errors: [{field, message}]}`.

let csrfToken = null;
let onUnauthorized = () => {};

export function setCsrf(token) {
  csrfToken = token || null;
}

/** Called with the error when a request answers 401 (the session ended): the app goes to the sign-in page. */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, body, headers) {
    const b = body && typeof body === 'object' ? body : {};
    super(b.message || (status ? `The server answered ${status}.` : 'The request failed.'));
    this.status = status;
    this.code = b.code || (status === 0 ? 'network_error' : 'error');
    this.errors = Array.isArray(b.errors) ? b.errors : [];
    const retry = headers && headers.get('Retry-After');
    this.retryAfter = retry && /^\d+$/.test(retry) ? Number(retry) : null;
  }
}

/**
 * `api('GET', '/api/v1/...')` → the decoded JSON (null for 204). Options: `auth: false` (a 401 is the caller's to
 * show, e.g. a wrong password), `headers`.
 */
export async function api(method, path, body, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, { message: 'The server cannot be reached. Check that Flywheel is running, then try again.' });
  }
  const text = res.status === 204 ? '' : await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text.slice(0, 300) };
    }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, res.headers);
    if (res.status === 401 && options.auth !== false) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path, options) => api('GET', path, undefined, options);
export const post = (path, body, options) => api('POST', path, body === undefined ? {} : body, options);
export const put = (path, body, options) => api('PUT', path, body, options);
export const patch = (path, body, options) => api('PATCH', path, body, options);
export const del = (path, options) => api('DELETE', path, undefined, options);

/** A path under the project: `projectPath(3, '/features')` → `/api/v1/projects/3/features`. */
export function projectPath(projectId, rest = '') {
  return `/api/v1/projects/${encodeURIComponent(projectId)}${rest}`;
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}
