// The published PostHog Node SDK (posthog-node) against a running Flywheel, read back through the native API:
//  - a session (pageviews, identify, alias, group identify, an event with groups), sent gzip-compressed to /batch/
//    as the SDK does by default: every event stored once under the merged person, properties and groups kept;
//  - remote flag evaluation (POST /flags/?v=2): booleans, variants, JSON payloads, person and group properties given
//    by the caller, person properties stored by earlier events, and `$feature_flag_called` captured once per
//    (user, flag, value).
// Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PROJECT_KEY, FLYWHEEL_PERSONAL_KEY.
import { isDeepStrictEqual } from 'node:util';
import { PostHog } from 'posthog-node';
import { url, projectKey, run, check, sleep, show, api, createFeature } from './flywheel.mjs';


// Reads until `ok(answer)` holds (events reach the read side shortly after they are acknowledged).
async function until(what, read, ok) {
  let last;
  for (let i = 0; i < 100; i++) {
    last = await read();
    if (ok(last)) return last;
    await sleep(100);
  }
  throw new Error(`${what}: still ${show(last)}`);
}

const errors = [];
const client = new PostHog(projectKey, { host: url, flushAt: 10, flushInterval: 200, featureFlagsRequestTimeoutMs: 10000 });
client.on('error', (e) => errors.push(String(e)));

// ------------------------------------------------------------------------------------------------------------------
// A session.
const anon = `anon-${run}`, user = `user-${run}`, aliasId = `alias-${run}`, company = `acme-${run}`;
for (const page of ['/', '/pricing', '/signup']) {
  client.capture({ distinctId: anon, event: '$pageview', properties: { $current_url: `https://example.com${page}` } });
}
client.identify({ distinctId: user, properties: { $anon_distinct_id: anon, $set: { email: `${run}@example.com`, plan: 'free' } } });
client.capture({ distinctId: user, event: 'upgraded', properties: { $set: { plan: 'pro' }, $set_once: { first_plan: 'free' } } });
client.alias({ distinctId: aliasId, alias: user });
client.groupIdentify({ groupType: 'company', groupKey: company, properties: { name: 'Acme', seats: 120 }, distinctId: user });
client.capture({ distinctId: user, event: 'invited_teammate', groups: { company }, properties: { count: 2 } });
for (let i = 0; i < 30; i++) client.capture({ distinctId: user, event: 'feature_used', properties: { i } });
await client.flush();
check(errors.length === 0, `the SDK reported no errors (${show(errors)})`);

const person = await until('the merged person', async () => (await api('GET', `/persons/${anon}`)).body,
  (p) => p && p.distinct_ids && p.distinct_ids.length === 3 && p.properties && p.properties.plan === 'pro');
check(isDeepStrictEqual(person.distinct_ids, [aliasId, anon, user].sort()),
  `identify and alias merged the ids (${show(person.distinct_ids)})`);
check(person.properties.email === `${run}@example.com` && person.properties.first_plan === 'free',
  'person properties from $set and $set_once');
check(person.groups.length === 1 && person.groups[0].group_key === company
  && isDeepStrictEqual(person.groups[0].properties, { name: 'Acme', seats: 120 }), 'the person is linked to its group');
const expected = 3 + 1 + 1 + 1 + 1 + 1 + 30;
const events = await until('the session events', async () => (await api('GET', `/events?person_id=${person.id}&limit=1000`)).body.results,
  (es) => es.length >= expected);
check(events.length === expected, `every event stored once under the person (${events.length} of ${expected})`);
check(events.every((e) => e.properties.$lib === 'posthog-node'), 'the SDK properties are kept');
const used = events.filter((e) => e.event === 'feature_used').map((e) => e.properties.i).sort((a, b) => a - b);
check(isDeepStrictEqual(used, [...Array(30).keys()]), 'the compressed batches arrived whole');
const invited = events.find((e) => e.event === 'invited_teammate');
check(isDeepStrictEqual(invited.properties.$groups, { company }), 'groups sent with capture are stored');

// ------------------------------------------------------------------------------------------------------------------
// Remote flag evaluation.
const PRO = `node-pro-${run}`, EXP = `node-exp-${run}`, BANNER = `node-banner-${run}`, BIG = `node-big-${run}`;
const LIMIT = `node-limit-${run}`;
await createFeature(PRO, 'boolean', false, [{ type: 'force', condition: { plan: 'pro' }, value: true }]);
await createFeature(EXP, 'string', 'control', [
  { type: 'experiment', variations: ['control', 'one-page', 'two-page'], weights: [0.34, 0.33, 0.33], coverage: 1,
    tracking_key: `checkout-${run}` },
]);
await createFeature(BANNER, 'json', { color: 'grey' }, [
  { type: 'force', condition: { plan: 'pro' }, value: { color: 'gold', size: 2 } },
]);
await createFeature(BIG, 'boolean', false, [
  { type: 'force', condition: { '$group_properties.company.seats': { $gte: 100 } }, value: true },
]);
await createFeature(LIMIT, 'number', 10, [{ type: 'force', condition: { plan: 'pro' }, value: 100 }]);

const visitor = `visitor-${run}`;
check(await client.isFeatureEnabled(PRO, visitor, { personProperties: { plan: 'pro' } }) === true,
  'isFeatureEnabled: the caller\'s person properties match');
check(await client.isFeatureEnabled(PRO, visitor, { personProperties: { plan: 'free' } }) === false,
  'isFeatureEnabled: another plan does not');
check(await client.isFeatureEnabled(PRO, user) === true, 'isFeatureEnabled: person properties stored by earlier events');
const variant = await client.getFeatureFlag(EXP, visitor);
check(['control', 'one-page', 'two-page'].includes(variant), `getFeatureFlag: a variant (${variant})`);
check(await client.getFeatureFlag(EXP, visitor) === variant, 'the same user gets the same variant');
const server = (await api('POST', '/evaluate', { environment: 'production', attributes: { id: visitor } })).body;
check(server.results[EXP].value === variant, 'the variant equals server-side evaluation');
check(isDeepStrictEqual(await client.getFeatureFlagPayload(BANNER, user), { color: 'gold', size: 2 }),
  'getFeatureFlagPayload: the JSON value of the matched rule');
check(await client.getFeatureFlag(BIG, visitor, { groups: { company: 'big' }, groupProperties: { company: { seats: 500 } } }) === true,
  'group properties given by the caller');
check(await client.getFeatureFlag(BIG, visitor, { groups: { company: 'small' }, groupProperties: { company: { seats: 5 } } }) === false,
  'another group\'s properties do not match');
check(await client.getFeatureFlag(BIG, user, { groups: { company } }) === true, 'group properties stored by groupIdentify');
const all = await client.getAllFlags(user);
check(all[PRO] === true && all[LIMIT] === true && all[BANNER] === true && typeof all[EXP] === 'string',
  `getAllFlags (${Object.keys(all).length} flags)`);
const payloads = await client.getAllFlagsAndPayloads(user);
check(isDeepStrictEqual(payloads.featureFlagPayloads[BANNER], { color: 'gold', size: 2 })
  && payloads.featureFlagPayloads[LIMIT] === 100, 'getAllFlagsAndPayloads: payloads of typed values');

// The SDK's newer single-request API.
const evaluated = await client.evaluateFlags(user);
check(evaluated.isEnabled(PRO) === true && evaluated.getFlag(EXP) === all[EXP]
  && isDeepStrictEqual(evaluated.getFlagPayload(BANNER), { color: 'gold', size: 2 }),
  'evaluateFlags: values, variant and payload from one /flags request');

// $feature_flag_called: one event per (user, flag, value), however often the SDK asks.
for (let i = 0; i < 3; i++) await client.getFeatureFlag(EXP, user);
await client.flush();
const called = await until('$feature_flag_called', async () => (await api('GET', `/events?person_id=${person.id}&event=%24feature_flag_called&limit=100`)).body.results,
  (es) => es.some((e) => e.properties.$feature_flag === EXP));
const forExp = called.filter((e) => e.properties.$feature_flag === EXP);
check(forExp.length === 1 && forExp[0].properties.$feature_flag_response === all[EXP],
  `$feature_flag_called captured once with the served variant (${forExp.length})`);

await client.shutdown();
check(errors.length === 0, `the SDK reported no errors (${show(errors)})`);
console.log('all checks passed');
process.exit(0);
