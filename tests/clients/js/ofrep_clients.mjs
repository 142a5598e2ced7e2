// The published OpenFeature OFREP providers for JavaScript against a running Flywheel:
//  - @openfeature/ofrep-web-provider (with @openfeature/web-sdk): one bulk evaluation per context, cached; polling
//    re-fetches with If-None-Match and must get 304 while nothing changed, then 200 with a new ETag after a
//    feature update or a context change;
//  - @openfeature/ofrep-provider (with @openfeature/server-sdk): one single-flag evaluation per call.
// Every request the web provider sends goes through a counting fetch, so the ETag exchange is observed as sent.
// Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PERSONAL_KEY (FLYWHEEL_PROJECT_KEY unused).
import { isDeepStrictEqual } from 'node:util';
import { OpenFeature as WebOpenFeature, ProviderEvents as WebEvents } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';
import { OpenFeature as ServerOpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import { EventSource } from 'eventsource';
import { url, run, check, sleep, show, api as manage, createFeature, updateDefault } from './flywheel.mjs';


// Resolves with the first provider event of `type` after `since`, or rejects after `ms`.
function nextEvent(client, type, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { client.removeHandler(type, handler); reject(new Error(`no ${type} within ${ms} ms`)); }, ms);
    function handler(details) { clearTimeout(timer); client.removeHandler(type, handler); resolve(details); }
    client.addHandler(type, handler);
  });
}

const BOOL = `js-bool-${run}`, TEXT = `js-string-${run}`, NUM = `js-number-${run}`, OBJ = `js-object-${run}`;
const OFF = `js-off-${run}`, LIVE = `js-live-${run}`;
await createFeature(BOOL, 'boolean', false, [{ type: 'force', condition: { plan: 'pro' }, value: true }]);
await createFeature(TEXT, 'string', 'blue', [{ type: 'force', condition: { country: { $in: ['CA', 'FR'] } }, value: 'red' }]);
await createFeature(NUM, 'number', 3, [{ type: 'force', condition: { plan: 'pro' }, value: 42 }]);
await createFeature(OBJ, 'json', { layout: 'a' }, [{ type: 'force', condition: { plan: 'pro' }, value: { layout: 'b', beta: true } }]);
await createFeature(OFF, 'boolean', true, [{ type: 'force', value: true }], { enabled: false });
await createFeature(LIVE, 'string', 'v1');
const conn = await manage('POST', '/sdk-connections', { environment: 'production', name: `js-${run}` });
check(conn.status === 201 && conn.body.client_key, 'an SDK client key for production');
const clientKey = conn.body.client_key;

// ------------------------------------------------------------------------------------------------------------------
// Web provider: bulk evaluation, ETag, polling.
const sent = [];
async function countingFetch(request, init) {
  const response = await fetch(request, init);
  sent.push({
    ifNoneMatch: request.headers.get('If-None-Match'),
    authorization: request.headers.get('Authorization'),
    path: new URL(request.url).pathname,
    status: response.status,
    etag: response.headers.get('ETag'),
  });
  return response;
}
const webProvider = new OFREPWebProvider({
  baseUrl: url,
  headers: [['Authorization', `Bearer ${clientKey}`]],
  fetchImplementation: countingFetch,
  pollInterval: 300,
  changeDetection: 'polling',
  cacheMode: 'disabled', // Node has no localStorage
  disableVisibilityRefresh: true,
});
const user = `web-${run}`;
await WebOpenFeature.setContext({ targetingKey: user, plan: 'pro', country: 'FR' });
await WebOpenFeature.setProviderAndWait(webProvider);
const web = WebOpenFeature.getClient();

check(sent.length >= 1 && sent[0].path === '/ofrep/v1/evaluate/flags' && sent[0].status === 200,
  `web: initialisation is one bulk evaluation (${show(sent[0])})`);
check(sent[0].authorization === `Bearer ${clientKey}` && sent[0].ifNoneMatch === null, 'web: the first request has the key and no If-None-Match');
const firstEtag = sent[0].etag;
check(typeof firstEtag === 'string' && firstEtag.length > 0, `web: the bulk response has an ETag (${firstEtag})`);

let d = web.getBooleanDetails(BOOL, false);
check(d.value === true && d.reason === 'TARGETING_MATCH' && d.errorCode === undefined && typeof d.variant === 'string',
  `web: boolean from the cache (${show(d)})`);
d = web.getStringDetails(TEXT, 'code-default');
check(d.value === 'red' && d.reason === 'TARGETING_MATCH', `web: string (${show(d)})`);
d = web.getNumberDetails(NUM, 0);
check(d.value === 42, `web: number (${show(d)})`);
d = web.getObjectDetails(OBJ, {});
check(isDeepStrictEqual(d.value, { layout: 'b', beta: true }), `web: object (${show(d.value)})`);
d = web.getStringDetails(LIVE, 'code-default');
check(d.value === 'v1' && d.reason === 'STATIC', `web: a feature without rules is STATIC (${show(d)})`);
d = web.getBooleanDetails(OFF, false);
check(d.value === false && d.reason === 'DISABLED' && d.errorCode === undefined, `web: a disabled feature gives the code default (${show(d)})`);
d = web.getBooleanDetails(OFF, true);
check(d.value === true && d.reason === 'DISABLED', 'web: ... whichever code default is passed');
d = web.getBooleanDetails(`js-missing-${run}`, true);
check(d.value === true && d.errorCode === 'FLAG_NOT_FOUND', `web: an unknown flag is FLAG_NOT_FOUND (${d.errorCode})`);
d = web.getBooleanDetails(TEXT, false);
check(d.value === false && d.errorCode === 'TYPE_MISMATCH', `web: a string read as boolean is TYPE_MISMATCH (${d.errorCode})`);

// Polling with nothing changed: every re-fetch carries the ETag and gets 304.
const before = sent.length;
await sleep(1500);
const polls = sent.slice(before);
check(polls.length >= 2, `web: the provider polled ${polls.length} times in 1.5 s`);
check(polls.every((r) => r.ifNoneMatch === firstEtag && r.status === 304),
  `web: every poll sent If-None-Match with the ETag and got 304 (${show(polls.map((r) => r.status))})`);
check(web.getBooleanDetails(BOOL, false).value === true, 'web: values are kept across 304s');

// A feature update: the next poll gets 200 with a new ETag, the provider reports the change.
const changed = nextEvent(web, WebEvents.ConfigurationChanged, 5000);
const mark = sent.length;
await updateDefault(LIVE, 'v2');
const event = await changed;
check(Array.isArray(event.flagsChanged) && event.flagsChanged.includes(LIVE), `web: ConfigurationChanged names the updated flag (${show(event.flagsChanged)})`);
check(web.getStringValue(LIVE, 'code-default') === 'v2', 'web: the updated value is served after the re-fetch');
const refetch = sent.slice(mark).find((r) => r.status === 200);
check(refetch && refetch.ifNoneMatch === firstEtag && refetch.etag && refetch.etag !== firstEtag,
  `web: the re-fetch sent the old ETag and got 200 with a new one (${show(refetch)})`);
await sleep(800);
const after = sent.slice(sent.indexOf(refetch) + 1);
check(after.length >= 1 && after.every((r) => r.status === 304 && r.ifNoneMatch === refetch.etag),
  `web: later polls send the new ETag and get 304 (${show(after.map((r) => r.status))})`);

// A context change keeping the targeting key: the provider still sends the old ETag, which must not match the new
// context (the ETag covers the context), so the server answers 200 with the new evaluation.
const beforeCtx = sent.length;
await WebOpenFeature.setContext({ targetingKey: user, plan: 'free', country: 'FR' });
// (a poll already in flight may land first: look for the context's own request)
const ctxFetch = sent.slice(beforeCtx).find((r) => r.status === 200);
check(ctxFetch && ctxFetch.ifNoneMatch === refetch.etag && ctxFetch.status === 200 && ctxFetch.etag !== refetch.etag,
  `web: a new context with the old ETag gets 200 and another ETag (${show(ctxFetch)})`);
check(web.getBooleanValue(BOOL, true) === false && web.getNumberValue(NUM, 0) === 3, 'web: values follow the new context');
// Another targeting key: the provider drops the ETag.
const beforeUser = sent.length;
await WebOpenFeature.setContext({ targetingKey: `${user}-2`, plan: 'pro' });
const userFetch = sent.slice(beforeUser).find((r) => r.ifNoneMatch === null);
check(userFetch && userFetch.status === 200,
  'web: a new targeting key re-fetches without If-None-Match');
check(web.getBooleanValue(BOOL, false) === true && web.getStringValue(TEXT, 'x') === 'blue', 'web: values for the new user');
await WebOpenFeature.close();

// ------------------------------------------------------------------------------------------------------------------
// Web provider with change notifications: bulk answers advertise an SSE stream (OFREP eventStreams); with polling
// off, a change reaches the provider only through it. Node 20 has no EventSource: the `eventsource` package
// provides the browser API.
globalThis.EventSource = EventSource;
const SSE = `js-sse-${run}`;
await createFeature(SSE, 'string', 'before');
const sseSent = [];
async function sseFetch(request, init) {
  const response = await fetch(request, init);
  sseSent.push({ path: new URL(request.url).pathname, status: response.status });
  return response;
}
const sseProvider = new OFREPWebProvider({
  baseUrl: url,
  headers: [['Authorization', `Bearer ${clientKey}`]],
  fetchImplementation: sseFetch,
  pollInterval: 0, // no polling: only the event stream can announce a change
  cacheMode: 'disabled',
  disableVisibilityRefresh: true,
});
await WebOpenFeature.setContext({ targetingKey: `${user}-sse`, plan: 'pro' });
await WebOpenFeature.setProviderAndWait('sse', sseProvider);
const sseClient = WebOpenFeature.getClient('sse');
check(sseClient.getStringValue(SSE, 'code-default') === 'before', 'sse: the initial bulk evaluation');
await sleep(500); // the EventSource connects
const fetchesBefore = sseSent.length;
const sseChanged = nextEvent(sseClient, WebEvents.ConfigurationChanged, 5000);
const changeStarted = Date.now();
await updateDefault(SSE, 'after');
await sseChanged;
const took = Date.now() - changeStarted;
check(sseClient.getStringValue(SSE, 'code-default') === 'after', `sse: the change reached the provider in ${took} ms`);
check(took < 1500, `sse: within the second (plus the provider's 50 ms debounce): ${took} ms`);
const refetches = sseSent.slice(fetchesBefore);
check(refetches.length === 1 && refetches[0].path === '/ofrep/v1/evaluate/flags' && refetches[0].status === 200,
  `sse: exactly one re-fetch, triggered by the event (${show(refetches)})`);
await WebOpenFeature.close();

// A wrong key: initialisation fails with a fatal provider error.
const badWeb = new OFREPWebProvider({ baseUrl: url, headers: [['Authorization', 'Bearer sdk-not-a-real-key']], cacheMode: 'disabled' });
let fatal = null;
try {
  await WebOpenFeature.setProviderAndWait('bad', badWeb);
} catch (err) {
  fatal = err;
}
check(fatal !== null, `web: an unknown key makes initialisation fail (${fatal && fatal.name})`);
await WebOpenFeature.close();

// ------------------------------------------------------------------------------------------------------------------
// Server provider: one POST /ofrep/v1/evaluate/flags/{key} per evaluation.
await ServerOpenFeature.setProviderAndWait('server', new OFREPProvider({ baseUrl: url, headers: [['X-API-Key', clientKey]] }));
const server = ServerOpenFeature.getClient('server');
const pro = { targetingKey: `srv-${run}`, plan: 'pro', country: 'CA' };
const free = { targetingKey: `srv-free-${run}`, plan: 'free', country: 'US' };
d = await server.getBooleanDetails(BOOL, false, pro);
check(d.value === true && d.reason === 'TARGETING_MATCH' && typeof d.variant === 'string', `server: boolean (${show(d)})`);
d = await server.getBooleanDetails(BOOL, true, free);
check(d.value === false && d.errorCode === undefined, `server: boolean, no match (${show(d)})`);
d = await server.getStringDetails(TEXT, 'code-default', pro);
check(d.value === 'red', `server: string (${d.value})`);
d = await server.getNumberDetails(NUM, 0, pro);
check(d.value === 42, `server: number (${d.value})`);
d = await server.getObjectDetails(OBJ, {}, free);
check(isDeepStrictEqual(d.value, { layout: 'a' }), `server: object (${show(d.value)})`);
d = await server.getStringDetails(LIVE, 'code-default', free);
check(d.value === 'v2', 'server: the updated feature');
d = await server.getBooleanDetails(`js-missing-${run}`, true, pro);
check(d.value === true && d.errorCode === 'FLAG_NOT_FOUND', `server: unknown flag is FLAG_NOT_FOUND (${d.errorCode})`);
d = await server.getNumberDetails(TEXT, 7, pro);
check(d.value === 7 && d.errorCode === 'TYPE_MISMATCH', `server: a string read as number is TYPE_MISMATCH (${d.errorCode})`);
d = await server.getBooleanDetails(BOOL, true, { plan: 'pro' });
check(d.value === true && d.errorCode === 'TARGETING_KEY_MISSING', `server: no targeting key is TARGETING_KEY_MISSING (${d.errorCode})`);
// ofrep-provider 0.1.3 predates the code-default (no `value`) response: it reports an error, but still returns the
// code default, which is what matters to the application.
d = await server.getBooleanDetails(OFF, false, pro);
check(d.value === false, `server: a disabled feature gives the code default (${show(d)})`);
await ServerOpenFeature.setProviderAndWait('server-bad', new OFREPProvider({ baseUrl: url, headers: [['X-API-Key', 'sdk-nope']] }));
d = await ServerOpenFeature.getClient('server-bad').getBooleanDetails(BOOL, true, pro);
check(d.value === true && d.errorCode === 'GENERAL', `server: an unknown key is an error, code default kept (${d.errorCode}: ${d.errorMessage})`);
await ServerOpenFeature.close();

console.log('ofrep js clients: all checks passed');
