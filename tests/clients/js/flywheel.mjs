// What the client scripts share (tests/browser/posthog_js.mjs too): the server they run against (the environment
// run_client in crates/cli/tests/it/clients.rs sets), checks that print what they checked, and the native API.
export const url = process.env.FLYWHEEL_URL.replace(/\/$/, '');
export const projectId = process.env.FLYWHEEL_PROJECT_ID;
export const projectKey = process.env.FLYWHEEL_PROJECT_KEY;
export const personalKey = process.env.FLYWHEEL_PERSONAL_KEY;
// A suffix for the names a run creates.
export const run = Math.random().toString(16).slice(2, 10);

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const show = (v) => JSON.stringify(v);

// A native API call on the project: `{status, body}`.
export async function api(method, path, body) {
  const res = await fetch(`${url}/api/v1/projects/${projectId}${path}`, {
    method,
    headers: { Authorization: `Bearer ${personalKey}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

// A feature served in production (`enabled: false` to disable it there; other members go into the definition).
export async function createFeature(key, valueType, defaultValue, rules = [], { enabled = true, ...more } = {}) {
  const res = await api('POST', '/features', {
    key, value_type: valueType, default_value: defaultValue,
    environments: { production: { enabled, rules } }, ...more,
  });
  if (res.status !== 201) throw new Error(`creating ${key}: ${res.status} ${show(res.body)}`);
  return res.body;
}

// Changes a feature's default value (optimistic concurrency: the version read first).
export async function updateDefault(key, defaultValue) {
  const { body: doc } = await api('GET', `/features/${key}`);
  const { status, body } = await api('PUT', `/features/${key}`, {
    version: doc.version, value_type: doc.value_type, default_value: defaultValue, environments: doc.environments,
  });
  if (status !== 200) throw new Error(`updating ${key}: ${status} ${show(body)}`);
  return body;
}
