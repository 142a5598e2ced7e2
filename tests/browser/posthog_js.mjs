// The published PostHog browser SDK (posthog-js, its full bundle) in Debian's Chromium against a running Flywheel,
// as a web app embeds it (`api_host` pointing at Flywheel, the page on another origin):
//  - it loads its remote configuration from /array/{token}/config.js without an error;
//  - it loads flags from /flags (a targeting rule on a person property, a variant) and calls back onFeatureFlags;
//  - pageviews, identify with $set and a custom event arrive (sent compressed, as the SDK chooses), read back
//    through the native API under one person.
// Fails on any console error. Environment: FLYWHEEL_URL, FLYWHEEL_PROJECT_ID, FLYWHEEL_PROJECT_KEY,
// FLYWHEEL_PERSONAL_KEY; CHROMIUM (optional, default /usr/bin/chromium).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { url, projectKey, run, check, sleep, show, api } from '../clients/js/flywheel.mjs';

const require = createRequire(import.meta.url);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const sdk = readFileSync(require.resolve('posthog-js/dist/array.full.js'), 'utf8');

const PRO = `web-pro-${run}`, EXP = `web-exp-${run}`;
for (const [key, valueType, defaultValue, rules] of [
  [PRO, 'boolean', false, [{ type: 'force', condition: { plan: 'pro' }, value: true }]],
  [EXP, 'string', 'control', [{ type: 'experiment', variations: ['control', 'new'], coverage: 1 }]],
]) {
  const res = await api('POST', '/features', {
    key, value_type: valueType, default_value: defaultValue, environments: { production: { enabled: true, rules } },
  });
  check(res.status === 201, `feature ${key} created`);
}

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-gpu',
  // The page and Flywheel are both on loopback here; a deployed app and Flywheel are not.
  '--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights'] });
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  const requests = [];
  page.on('request', (r) => { if (r.url().startsWith(url)) requests.push(new URL(r.url()).pathname); });
  // The app lives on its own origin (on loopback too: Chromium refuses requests from a public origin to a private
  // address); only the SDK's requests go to Flywheel.
  await page.route('http://localhost:9/**', (route) => {
    if (new URL(route.request().url()).pathname === '/posthog.js') {
      return route.fulfill({ contentType: 'application/javascript', body: sdk });
    }
    // The SDK is started while the page loads, as apps embed it (it starts sending once the DOM is ready).
    return route.fulfill({
      contentType: 'text/html',
      body: `<!doctype html><html lang="en"><head><title>app</title><script src="/posthog.js"></script><script>
        window.started = new Promise((resolve) => posthog.init(${JSON.stringify(projectKey)}, {
          api_host: ${JSON.stringify(url)}, person_profiles: 'always',
          opt_out_useragent_filter: true, // headless Chromium looks like a bot to the SDK
          loaded: (ph) => resolve(ph.get_distinct_id()),
        }));
      </script></head><body><h1>app</h1></body></html>`,
    });
  });
  await page.goto('http://localhost:9/pricing');
  const anonymous = await page.evaluate(() => window.started);
  check(typeof anonymous === 'string' && anonymous.length > 0, `the SDK started (anonymous id ${anonymous})`);

  // Flags: loaded once, the person properties of identify() applied on the reload that follows it.
  const user = `web-user-${run}`;
  const before = await page.evaluate((flag) => new Promise((resolve) => {
    window.posthog.onFeatureFlags(() => resolve(window.posthog.getFeatureFlag(flag)));
  }), PRO);
  check(before === false, `flags loaded from /flags: the pro-only flag is off for an anonymous visitor (${before})`);
  const after = await page.evaluate(([flag, id]) => new Promise((resolve) => {
    let done = false;
    window.posthog.onFeatureFlags(() => {
      if (!done && window.posthog.getFeatureFlag(flag) === true) { done = true; resolve(true); }
    });
    window.posthog.identify(id, { plan: 'pro', email: `${id}@example.com` });
    setTimeout(() => { if (!done) resolve(window.posthog.getFeatureFlag(flag)); }, 5000);
  }), [PRO, user]);
  check(after === true, `after identify with plan=pro the flag is on (${after})`);
  const variant = await page.evaluate((flag) => window.posthog.getFeatureFlag(flag), EXP);
  check(['control', 'new'].includes(variant), `a variant (${variant})`);
  const server = (await api('POST', '/evaluate', { environment: 'production', attributes: { id: user } })).body;
  check(server.results[EXP].value === variant, 'the variant equals server-side evaluation for the identified user');

  await page.evaluate(() => { window.posthog.capture('clicked_buy', { price: 49, currency: 'EUR' }); });
  check(requests.some((p) => p.startsWith('/array/')), `the remote configuration was loaded (${show([...new Set(requests)])})`);

  // Events arrive under one person (the SDK batches and sends on a timer).
  let events = [];
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    await page.evaluate(() => window.posthog.flush && window.posthog.flush());
    const person = await api('GET', `/persons/${encodeURIComponent(user)}`);
    if (person.status === 200) {
      const res = await api('GET', `/events?person_id=${person.body.id}&limit=100`);
      events = res.body.results;
      if (events.some((e) => e.event === 'clicked_buy') && events.some((e) => e.event === '$pageview')) break;
    }
    await sleep(250);
  }
  const names = events.map((e) => e.event);
  check(names.includes('$pageview') && names.includes('$identify') && names.includes('clicked_buy'),
    `pageview, identify and the custom event arrived under one person (${show(names)})`);
  const buy = events.find((e) => e.event === 'clicked_buy');
  check(buy.properties.price === 49 && buy.properties.$lib === 'web' && buy.properties.$current_url === 'http://localhost:9/pricing',
    'event properties and the SDK\'s own are kept');
  const person = (await api('GET', `/persons/${encodeURIComponent(user)}`)).body;
  check(person.distinct_ids.includes(anonymous) && person.properties.plan === 'pro',
    'identify merged the anonymous visitor and set the person property');
  check(errors.length === 0, `no console errors (${show(errors)})`);
} finally {
  await browser.close();
}
console.log('all checks passed');
process.exit(0);
