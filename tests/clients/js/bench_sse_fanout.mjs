// Benchmark (run by scripts/bench-sse, not a test): how long one feature change takes to reach N open GrowthBook
// streams (/sub/{key}) of one SDK key. Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PERSONAL_KEY; N (2000).
import { EventSource } from 'eventsource';
const url = process.env.FLYWHEEL_URL, pid = process.env.FLYWHEEL_PROJECT_ID, pk = process.env.FLYWHEEL_PERSONAL_KEY;
const n = Number(process.env.N || 2000);
const api = async (method, path, body) => {
  const r = await fetch(`${url}/api/v1/projects/${pid}${path}`, { method, headers: { Authorization: `Bearer ${pk}`, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
  return r.json();
};
await api('POST', '/features', { key: 'fan', value_type: 'string', default_value: 'v0', environments: { production: { enabled: true, rules: [] } } });
const key = (await api('POST', '/sdk-connections', { environment: 'production', name: 'fan' })).client_key;
let open = 0; const seen = new Array(n).fill(null); let target = null, changedAt = 0;
const sources = [];
for (let i = 0; i < n; i++) {
  const es = new EventSource(`${url}/sub/${key}`);
  es.onopen = () => { open++; };
  es.addEventListener('features', (e) => { if (target && JSON.parse(e.data).features.fan.defaultValue === target && seen[i] === null) seen[i] = Date.now() - changedAt; });
  sources.push(es);
}
while (open < n) await new Promise((r) => setTimeout(r, 50));
console.log(`${n} streams open; rss ${(process.memoryUsage().rss / 1e6).toFixed(0)} MB (client)`);
for (const v of ['v1', 'v2', 'v3']) {
  seen.fill(null); target = v;
  const doc = await api('GET', '/features/fan');
  changedAt = Date.now();
  await api('PUT', '/features/fan', { version: doc.version, value_type: 'string', default_value: v, environments: doc.environments });
  while (seen.some((x) => x === null) && Date.now() - changedAt < 10000) await new Promise((r) => setTimeout(r, 5));
  const got = seen.filter((x) => x !== null).sort((a, b) => a - b);
  console.log(`change ${v}: ${got.length}/${n} streams in ${got[got.length - 1]} ms (p50 ${got[Math.floor(got.length / 2)]} ms)`);
}
sources.forEach((s) => s.close());
process.exit(0);
