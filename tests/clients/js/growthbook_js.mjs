// The published GrowthBook JavaScript SDK (@growthbook/growthbook) against a running Flywheel:
//  - it loads the features of an SDK key from /api/features/{key} and evaluates them locally: for 300 random users
//    × every feature its answers (value and source) must equal Flywheel's server-side evaluation (/evaluate);
//  - streaming: the SDK opens /sub/{key} only when the payload response says `x-sse-support: enabled`, then a
//    feature changed through the management API must reach it over the stream within a second, without a refetch;
//  - an encrypted connection: the SDK decrypts `encryptedFeatures` with the key handed out once.
// Every request the SDK sends goes through a counting fetch, so "no refetch" is observed, not assumed.
// Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PERSONAL_KEY (FLYWHEEL_PROJECT_KEY unused).
import { isDeepStrictEqual } from 'node:util';
import { GrowthBook, setPolyfills, configureCache, clearCache } from '@growthbook/growthbook';
import { EventSource } from 'eventsource';
import { url, run, check, sleep, show, api as manage, createFeature } from './flywheel.mjs';


// Every SDK request and stream is counted by path.
const sent = [];
class CountingEventSource extends EventSource {
  constructor(address, init) {
    sent.push(new URL(address).pathname);
    super(address, init);
  }
}
setPolyfills({
  fetch: async (input, init) => {
    sent.push(new URL(typeof input === 'string' ? input : input.url).pathname);
    return fetch(input, init);
  },
  EventSource: CountingEventSource,
});
// No cache shared between the SDK instances below: each must fetch for itself.
configureCache({ disableCache: true });

const K = (name) => `gbjs-${name}-${run}`;
await createFeature(K('bool'), 'boolean', false, [
  { type: 'force', condition: { country: { $in: ['US', 'CA'] }, plan: { $ne: 'free' } }, value: true },
  { type: 'force', condition: { plan: 'free' }, value: false },
]);
await createFeature(K('rollout'), 'string', 'control', [
  { type: 'rollout', condition: { age: { $gte: 21 } }, value: 'new', coverage: 0.3 },
]);
await createFeature(K('experiment'), 'number', 0, [
  { type: 'experiment', variations: [0, 10, 20], weights: [0.2, 0.3, 0.5], coverage: 0.8 },
]);
await createFeature(K('json'), 'json', { layout: 'a' }, [
  { type: 'force', condition: { email: { $regex: '@acme\\.io$' } }, value: { layout: 'b', beta: true } },
]);
await createFeature(K('version'), 'boolean', false, [
  { type: 'force', condition: { appVersion: { $vgte: '2.10.0' } }, value: true },
]);
await createFeature(K('child'), 'boolean', false, [{ type: 'force', value: true }],
  { prerequisites: [{ id: K('bool') }] });
await createFeature(K('namespaced'), 'boolean', false, [
  { type: 'experiment', tracking_key: `ns-${run}`, variations: [false, true], namespace: ['checkout', 0, 0.5],
    hash_attribute: 'company' },
]);
await createFeature(K('disabled'), 'boolean', true, [], { enabled: false });
await createFeature(K('live'), 'string', 'v1');
const keys = ['bool', 'rollout', 'experiment', 'json', 'version', 'child', 'namespaced', 'disabled'].map(K);

const conn = await manage('POST', '/sdk-connections', { environment: 'production', name: `gbjs-${run}` });
check(conn.status === 201 && conn.body.client_key, 'an SDK client key for production');
const clientKey = conn.body.client_key;

// ------------------------------------------------------------------------------------------------------------------
// Local evaluation equals server-side evaluation.
const tracked = [];
const gb = new GrowthBook({
  apiHost: url, clientKey, trackingCallback: (experiment, result) => tracked.push([experiment.key, result.key]),
});
const init = await gb.init({ timeout: 5000, streaming: true });
check(init.success === true && init.source === 'network', `the SDK loaded the payload from the network (${show(init)})`);
const loaded = Object.keys(gb.getFeatures()).filter((k) => k.endsWith(run)).sort(); // this run's
check(isDeepStrictEqual(loaded, [...keys.filter((k) => k !== K('disabled')), K('live')].sort()),
  `the SDK loaded every enabled feature (${loaded.length})`);

let seed = 7;
const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const pick = (xs) => xs[Math.floor(random() * xs.length)];
let compared = 0;
const mismatches = [];
for (let i = 0; i < 300; i++) {
  const attributes = {
    id: `user-${Math.floor(random() * 1e9)}`,
    country: pick(['US', 'CA', 'FR', 'DE', 'BR']),
    plan: pick(['free', 'pro', 'team']),
    age: 14 + Math.floor(random() * 66),
    email: pick(['a@acme.io', 'b@example.com', 'c@ACME.io']),
    appVersion: pick(['2.9.9', '2.10.0', '2.10.1-beta', '10.0', '1.0.0']),
  };
  if (random() < 0.8) attributes.company = `co-${Math.floor(random() * 200)}`;
  await gb.setAttributes(attributes);
  const server = await manage('POST', '/evaluate', { environment: 'production', attributes });
  if (server.status !== 200) throw new Error(`/evaluate: ${server.status} ${show(server.body)}`);
  for (const key of keys) {
    const local = gb.evalFeature(key);
    const remote = server.body.results[key];
    const remoteValue = remote ? remote.value : null;
    const remoteSource = remote ? remote.source : 'unknownFeature';
    compared++;
    if (!isDeepStrictEqual(local.value, remoteValue) || local.source !== remoteSource) {
      mismatches.push({ key, attributes, local: [local.value, local.source], remote: [remoteValue, remoteSource] });
    }
  }
}
check(mismatches.length === 0,
  `local and server-side evaluation agree on ${compared} (user, feature) pairs${mismatches.length ? `: ${show(mismatches.slice(0, 3))}` : ''}`);
check(tracked.length > 0 && tracked.every(([exp]) => exp === K('experiment') || exp === `ns-${run}`),
  `experiments reached the tracking callback (${tracked.length} exposures)`);

// ------------------------------------------------------------------------------------------------------------------
// Streaming: a change reaches the SDK over /sub/{key}, within a second, without another payload request.
const fetchesBefore = sent.filter((p) => p.startsWith('/api/features/')).length;
check(fetchesBefore === 1, `one payload request so far (${fetchesBefore})`);
check(gb.getFeatureValue(K('live'), 'none') === 'v1', 'the live feature starts at v1');
await sleep(300); // the stream is opened right after the first load
const { body: doc } = await manage('GET', `/features/${K('live')}`);
const changedAt = Date.now();
const updated = await manage('PUT', `/features/${K('live')}`, {
  version: doc.version, value_type: doc.value_type, default_value: 'v2', environments: doc.environments,
});
check(updated.status === 200, 'the live feature was changed through the management API');
let seenAfter = null;
while (Date.now() - changedAt < 5000) {
  if (gb.getFeatureValue(K('live'), 'none') === 'v2') { seenAfter = Date.now() - changedAt; break; }
  await sleep(10);
}
check(seenAfter !== null && seenAfter < 1000, `the SDK saw the change over the stream after ${seenAfter} ms (< 1 s)`);
const fetchesAfter = sent.filter((p) => p.startsWith('/api/features/')).length;
check(fetchesAfter === fetchesBefore, `no payload refetch: the change came over the stream (${fetchesAfter} requests)`);
check(sent.includes(`/sub/${clientKey}`), 'the SDK opened the stream /sub/{clientKey}');
gb.destroy();

// ------------------------------------------------------------------------------------------------------------------
// An encrypted connection.
const secret = await manage('POST', '/sdk-connections', { environment: 'production', name: `gbjs-enc-${run}`, encrypt: true });
check(secret.status === 201 && secret.body.decryption_key, 'an encrypted connection hands out its decryption key');
const raw = await (await fetch(`${url}/api/features/${secret.body.client_key}`)).json();
check(isDeepStrictEqual(raw.features, {}) && typeof raw.encryptedFeatures === 'string',
  'the encrypted payload shows no feature in the clear');
const egb = new GrowthBook({
  apiHost: url, clientKey: secret.body.client_key, decryptionKey: secret.body.decryption_key,
  attributes: { id: 'enc-user', country: 'US', plan: 'pro' },
});
const einit = await egb.init({ timeout: 5000 });
check(einit.success === true, `the SDK loaded the encrypted payload (${show(einit)})`);
check(egb.isOn(K('bool')) === true && egb.getFeatureValue(K('live'), 'none') === 'v2',
  'the SDK decrypted the features and evaluates them');
egb.destroy();
clearCache();

console.log('all checks passed');
process.exit(0);
