// The dashboard's analytics, experiments, persons, growth and settings pages in a real browser, on data written by
// `flywheel generate`: an insight of each kind is built in the forms and every number shown is checked against the
// API's own answer to the same definition; an insight is saved to a dashboard and drawn there; an experiment's
// results (and an SRM warning) are shown and a variation shipped; a referral held for fraud review is approved; a
// person is searched, opened, exported and erased; a viewer sees none of the controls that change anything. axe-core
// runs on every page (no serious or critical violation allowed); screenshots go to $FLYWHEEL_ARTIFACTS.
//
// With FLYWHEEL_BENCH=1 it only measures each page's first load (cold cache, best and median of 3) on whatever the
// server holds: `scripts/bench-dashboard` runs it against a 1M-event data set.
//
// Environment: FLYWHEEL_URL, FLYWHEEL_BOOTSTRAP_KEY (the unrestricted key `generate` printed), FLYWHEEL_PROJECT_ID,
// FLYWHEEL_PROJECT_KEY (the public key, for capturing), FLYWHEEL_ARTIFACTS, CHROMIUM.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const url = process.env.FLYWHEEL_URL.replace(/\/$/, '');
const bootstrapKey = process.env.FLYWHEEL_BOOTSTRAP_KEY;
const projectId = Number(process.env.FLYWHEEL_PROJECT_ID || 1);
const projectKey = process.env.FLYWHEEL_PROJECT_KEY;
const bench = process.env.FLYWHEEL_BENCH === '1';
const artifacts = process.env.FLYWHEEL_ARTIFACTS || path.join(os.tmpdir(), 'flywheel-dashboard-artifacts');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(artifacts, { recursive: true });
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const P = `/api/v1/projects/${projectId}`;
const app = `/app/projects/${projectId}`;
const OWNER = { email: 'olive@example.com', password: 'an analytics passphrase' };
const VIEWER = { email: 'victor@example.com', password: 'a viewing passphrase' };

let passed = 0;
function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  passed += 1;
  console.log(`ok - ${message}`);
}

async function api(method, p, body, key = bootstrapKey) {
  const res = await fetch(`${url}${p}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed };
}

async function must(method, p, body, want = [200, 201]) {
  const r = await api(method, p, body);
  if (!want.includes(r.status)) throw new Error(`${method} ${p} answered ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}

async function capture(batch) {
  const res = await fetch(`${url}/batch`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ api_key: projectKey, batch }),
  });
  if (res.status !== 200) throw new Error(`capture answered ${res.status}: ${await res.text()}`);
}

async function until(what, fn, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** "1,234" → 1234; "12.5%" → 12.5. */
const numberOf = (text) => Number(String(text).replace(/[,%\s]/g, ''));
const pctText = (v) => `${(v * 100).toFixed(1)}%`;
/** JSON with object keys sorted: equal values compare equal whatever the order of their keys. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}
const same = (a, b) => canonical(a) === canonical(b);

// ---------------------------------------------------------------------------------------------------------------
// Browser, pages, accessibility

const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'flywheel-chromium-'));
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', `--disk-cache-dir=${path.join(userDataDir, 'cache')}`],
});

const problems = [];
const violations = [];
const audited = [];
let lastPage = null;
const consoleErrors = [];

async function newPage(context, label) {
  const page = await context.newPage();
  lastPage = page;
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(`${label} console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`${label}: uncaught ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) problems.push(`${label}: ${msg.text()}`);
  });
  return page;
}

async function ready(page, before = null) {
  await page.waitForFunction((b) => {
    const v = document.documentElement.getAttribute('data-ready');
    return v !== null && v !== b;
  }, before, { timeout: 30000 });
}

async function navigating(page, action) {
  const before = await page.evaluate(() => document.documentElement.getAttribute('data-ready'));
  await action();
  await ready(page, before);
}

async function goto(page, p) {
  await page.goto(`${url}${p}`);
  await ready(page);
}

async function axe(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of result.violations) console.log(`axe ${name}: ${v.impact} ${v.id} (${v.nodes.length}) ${v.help}`);
  for (const v of bad) {
    violations.push({ page: name, id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) });
  }
  audited.push({ page: name, violations: result.violations.length, serious: bad.length });
}

async function visit(page, name) {
  await axe(page, name);
  await page.screenshot({ path: path.join(artifacts, `analytics-${name}.png`), fullPage: true });
}

const nav = (page, name) => page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });
const heading = (page) => page.locator('main h1').first().innerText();

async function signIn(context, who, label) {
  const page = await newPage(context, label);
  await goto(page, '/app/signin');
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password').fill(who.password);
  await navigating(page, () => page.getByRole('button', { name: 'Sign in' }).click());
  return page;
}

/** The rows of a chart's table of numbers: {label: [total, ...values]}. */
async function chartTable(scope) {
  return scope.locator('table[data-chart-table] tbody tr').evaluateAll((rows) => Object.fromEntries(rows.map((r) => [
    r.getAttribute('data-series') || r.getAttribute('data-cohort'),
    [...r.querySelectorAll('td')].map((td) => td.getAttribute('data-value') ?? td.textContent),
  ])));
}

/** Presses Run and waits for the answer of `kind`; resolves to the request body the page sent. */
async function runInsight(page, kind) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(`/insights/${kind}`) && r.request().method() === 'POST'),
    page.getByRole('button', { name: 'Run', exact: true }).click(),
  ]);
  check(response.status() === 200, `the ${kind} insight runs (${response.status()})`);
  await page.locator(`.answer[aria-busy="false"] section[data-kind="${kind}"]`).waitFor();
  return response.request().postDataJSON();
}

// ---------------------------------------------------------------------------------------------------------------
// Benchmark mode: first load of each page, cold cache.

async function measure(pages) {
  const setupCtx = await browser.newContext();
  const login = await setupCtx.request.post(`${url}/api/v1/auth/login`, { data: OWNER });
  if (login.status() !== 200) throw new Error(`sign-in for the measurement answered ${login.status()}`);
  const state = await setupCtx.storageState();
  await setupCtx.close();
  const timings = [];
  for (const [name, p] of pages) {
    const runs = [];
    for (let i = 0; i < 3; i += 1) {
      const ctx = await browser.newContext({ storageState: state, viewport: { width: 1366, height: 860 } });
      const page = await ctx.newPage();
      await page.goto(`${url}${p}`);
      await ready(page);
      runs.push(await page.evaluate(() => {
        const nav0 = performance.getEntriesByType('navigation')[0];
        const mark = performance.getEntriesByName('fw-ready').pop();
        return { ready: mark ? mark.startTime : NaN, dom: nav0.domContentLoadedEventEnd };
      }));
      await ctx.close();
    }
    // The first run is the server's first answer to the page's queries; later ones may come from its answer cache.
    const first = Math.round(runs[0].ready);
    runs.sort((a, b) => a.ready - b.ready);
    timings.push({ page: name, first, best: Math.round(runs[0].ready), median: Math.round(runs[1].ready), dom: Math.round(runs[1].dom) });
  }
  console.log('\nFirst load, cold cache, 3 runs (ready = data loaded and rendered):');
  for (const t of timings) {
    console.log(`METRIC page="${t.page}" first_ready_ms=${t.first} best_ready_ms=${t.best} ready_ms=${t.median} dom_content_loaded_ms=${t.dom}`);
  }
  return timings;
}

const PAGES = (extra) => [
  ['insights (trends)', `${app}/insights`],
  ['insights (funnel)', `${app}/insights?kind=funnel&q=${encodeURIComponent(JSON.stringify({ kind: 'funnel', steps: [{ event: 'signed_up' }, { event: 'project_created' }, { event: 'trial_started' }], range: '-30d' }))}`],
  ['insights (retention)', `${app}/insights?kind=retention&q=${encodeURIComponent(JSON.stringify({ kind: 'retention', start_event: 'signed_up', return_event: 'task_completed', period: 'week', periods: 8 }))}`],
  ['insights (lifecycle)', `${app}/insights?kind=lifecycle&q=${encodeURIComponent(JSON.stringify({ kind: 'lifecycle', range: '-30d' }))}`],
  ['persons', `${app}/persons`],
  ['persons (search)', `${app}/persons?search=user_12`],
  ['person', `${app}/persons/${encodeURIComponent(extra.person)}`],
  ['experiments', `${app}/experiments`],
  ...(extra.experiment ? [['experiment results', `${app}/experiments/${extra.experiment}`]] : []),
  ['growth', `${app}/growth`],
  ['growth loops', `${app}/growth/loops`],
  ['growth graph', `${app}/growth/graph`],
  ['accounts', `${app}/accounts`],
  ...(extra.account ? [['account', `${app}/accounts/${encodeURIComponent(extra.account.group_type)}/${encodeURIComponent(extra.account.group_key)}`]] : []),
  ['dashboards', `${app}/dashboards`],
  ['project settings', `${app}/settings/project`],
];

try {
  if (bench) {
    const r = await api('POST', '/api/v1/auth/setup', { ...OWNER, name: 'Olive' });
    if (r.status !== 200 && r.status !== 201 && r.status !== 409) throw new Error(`setup answered ${r.status}: ${JSON.stringify(r.body)}`);
    const persons = await must('GET', `${P}/persons?limit=1`);
    const xs = (await must('GET', `${P}/experiments`)).results || [];
    const account = ((await must('GET', `${P}/groups?limit=1`)).results || [])[0];
    const timings = await measure(PAGES({ person: persons.results[0].distinct_ids[0], experiment: xs[0] && xs[0].key, account }));
    const slow = timings.filter((t) => t.first >= 1000 || t.best >= 1000);
    console.log(slow.length ? `slower than 1 s: ${slow.map((t) => t.page).join(', ')}` : 'every page is ready in under 1 s, first run included');
    process.exit(slow.length ? 1 : 0);
  }

  // ------------------------------------------------------------------ fixtures through the API
  await must('POST', '/api/v1/auth/setup', { ...OWNER, name: 'Olive' });
  const invitation = await must('POST', '/api/v1/organizations/1/invitations', { email: VIEWER.email, role: 'viewer' });
  await must('POST', '/api/v1/auth/accept-invitation', { token: invitation.token, name: 'Victor', password: VIEWER.password });

  // Every generated event is loaded before anything is compared.
  await until('the generated events to be loaded', async () => {
    const r = await api('POST', `${P}/insights/trends`, { series: [{ event: '$pageview' }], date_from: '-30d' });
    return r.status === 200 && r.body.complete;
  }, 90000);

  // An experiment with exposures and conversions (b converts more), and one whose split is off (SRM).
  for (const [feature, exp] of [['onboarding', 'onboarding-v2'], ['pricing-page', 'pricing-v3']]) {
    await must('POST', `${P}/features`, {
      key: feature, value_type: 'string', default_value: 'control',
      environments: { production: { enabled: true, rules: [{ type: 'experiment', id: 'exp', variations: ['control', 'b'], weights: [0.5, 0.5] }] } },
    });
    if (feature === 'onboarding') await must('POST', `${P}/metrics`, { key: 'activated', name: 'Activated', kind: 'conversion', event: 'x_activated' });
    await must('POST', `${P}/experiments`, { key: exp, name: exp === 'onboarding-v2' ? 'Onboarding v2' : 'Pricing v3', feature, rule_id: 'exp', metrics: { primary: ['activated'] } });
    await must('POST', `${P}/experiments/${exp}/start`);
  }
  const exposures = [];
  for (let i = 0; i < 400; i += 1) {
    const variant = i % 2 ? 'b' : 'control';
    exposures.push({ event: '$feature_flag_called', distinct_id: `x-${i}`, properties: { $feature_flag: 'onboarding', $feature_flag_response: variant } });
    // b converts half of its units (i % 4 === 1), the control a fifth (i % 10 === 0).
    if (variant === 'b' ? i % 4 === 1 : i % 10 === 0) exposures.push({ event: 'x_activated', distinct_id: `x-${i}` });
  }
  for (let i = 0; i < 300; i += 1) {
    exposures.push({ event: '$feature_flag_called', distinct_id: `y-${i}`, properties: { $feature_flag: 'pricing-page', $feature_flag_response: i < 200 ? 'control' : 'b' } });
  }
  await capture(exposures);
  const results = await until('experiment exposures', async () => {
    const r = await must('GET', `${P}/experiments/onboarding-v2/results`);
    return r.units && r.units[0] + r.units[1] === 400 ? r : null;
  });
  await until('the skewed experiment\'s exposures', async () => {
    const r = await must('GET', `${P}/experiments/pricing-v3/results`);
    return r.units && r.units[0] + r.units[1] === 300;
  });

  // A referral program; a referee with a disposable address is held for review, an honest one qualifies.
  await must('POST', `${P}/referral-programs`, {
    key: 'friends', name: 'Invite friends', landing_url: 'https://app.example.com/signup',
    qualify: { event: 'x_subscribed' }, rewards: { referrer: { amount: 20, unit: 'USD' } }, fraud: { hold_at: 40, reject_at: 80 },
  });
  const { code } = await must('POST', `${P}/referral-programs/friends/codes`, { referrer: 'ref-owner' });
  await capture([
    { event: '$identify', distinct_id: 'ref-owner', properties: { $set: { email: 'owner@corp.io' } } },
    ...['held-1', 'honest-1'].flatMap((who) => [
      { event: '$pageview', distinct_id: who, properties: { $current_url: `https://app.example.com/signup?ref=${code}` } },
      { event: '$identify', distinct_id: who, properties: { $set: { email: who === 'held-1' ? 'x7@mailinator.com' : 'honest@gmail.com' } } },
    ]),
  ]);
  await capture([{ event: 'x_subscribed', distinct_id: 'held-1' }, { event: 'x_subscribed', distinct_id: 'honest-1' }]);
  const heldReferral = await until('a held referral', async () => {
    const r = await must('GET', `${P}/referral-programs/friends/referrals?status=held`);
    return (r.results || []).find((x) => x.referee === 'held-1');
  });

  // ------------------------------------------------------------------ insights: each kind against the API
  const owner = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
  const page = await signIn(owner, OWNER, 'owner');
  await navigating(page, () => nav(page, 'Insights').click());
  check(await heading(page) === 'Insights', 'the insights page opens from the navigation');
  await page.locator('.answer[aria-busy="false"] section[data-kind="trends"]').waitFor();

  // Trends: two series, 30 days by week.
  await page.getByRole('button', { name: 'Add a series' }).click();
  await page.getByLabel('Series B event').fill('signed_up');
  await page.getByLabel('Measure').nth(1).selectOption('dau');
  await page.getByLabel('Date range').selectOption('-30d');
  await page.getByLabel('Interval').selectOption('week');
  let sent = await runInsight(page, 'trends');
  const trendsBody = { series: [{ event: '$pageview', math: 'total' }, { event: 'signed_up', math: 'dau' }], date_from: '-30d', interval: 'week' };
  check(same(sent, trendsBody), `the trends form sends the definition built in it (${JSON.stringify(sent)})`);
  let answer = (await must('POST', `${P}/insights/trends`, trendsBody)).result;
  let shown = await chartTable(page.locator('.answer'));
  for (const s of answer) {
    const row = shown[s.label];
    check(row && numberOf(row[0]) === s.count && same(row.slice(1).map(numberOf), s.data),
      `trends: ${s.label} (${s.math}) shows the API's total ${s.count} and ${s.data.length} weekly values`);
  }
  check(await page.locator('.answer svg.chart-svg polyline').count() === 2, 'trends: a line per series in the chart');
  check(await page.locator('.answer .legend li').count() === 2, 'trends: a legend entry per series');
  await visit(page, 'insights-trends');

  // Trends with a breakdown and an event-property filter, as bars.
  await page.getByLabel('Break down by').selectOption('person');
  await page.getByLabel('Breakdown property').fill('plan');
  await page.getByRole('button', { name: 'Add a filter' }).click();
  await page.getByLabel('Filter 1 property').fill('$browser');
  await page.getByLabel('Value').fill('Chrome');
  await page.getByLabel('Chart type').selectOption('bar');
  sent = await runInsight(page, 'trends');
  check(same(sent.breakdown, { type: 'person', property: 'plan' }) && same(sent.properties, [{ key: '$browser', operator: 'exact', type: 'event', value: 'Chrome' }]),
    'the breakdown and the filter are sent');
  answer = (await must('POST', `${P}/insights/trends`, sent)).result;
  shown = await chartTable(page.locator('.answer'));
  check(Object.keys(shown).length === answer.length && answer.length > 2, `trends: a row per series and plan (${answer.length})`);
  for (const s of answer) {
    const label = `${s.label} · ${s.breakdown_value === null ? '(none)' : s.breakdown_value}`;
    check(shown[label] && numberOf(shown[label][0]) === s.count, `trends by plan: ${label} totals ${s.count}`);
  }
  check(await page.locator('.answer svg.chart-svg rect.bar').count() > 0, 'trends: drawn as bars when asked');
  await page.getByRole('button', { name: 'Remove filter 1' }).click();
  await page.getByLabel('Break down by').selectOption('');

  // Funnel: the empty step is refused next to its field, then three steps.
  await page.getByRole('button', { name: 'Funnel', exact: true }).click();
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.locator('.field-error').first().waitFor();
  const step2 = page.getByLabel('Step 2 event');
  check(await step2.getAttribute('aria-invalid') === 'true', 'funnel: an empty step is marked invalid');
  const errId = (await step2.getAttribute('aria-describedby')).split(' ').find((i) => i.endsWith('-err'));
  check(/must not be empty/.test(await page.locator(`[id="${errId}"]`).innerText()), 'funnel: the API\'s message is shown next to the step');
  await page.getByLabel('Step 1 event').fill('signed_up');
  await step2.fill('project_created');
  await page.getByRole('button', { name: 'Add a step' }).click();
  await page.getByLabel('Step 3 event').fill('trial_started');
  sent = await runInsight(page, 'funnel');
  answer = (await must('POST', `${P}/insights/funnel`, sent)).result;
  const counts = await page.locator('.answer .funnel-count').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-count'))));
  check(same(sent.steps, [{ event: 'signed_up' }, { event: 'project_created' }, { event: 'trial_started' }]), 'funnel: the steps are sent in order');
  check(same(counts, answer.steps.map((s) => s.count)), `funnel: step counts ${counts.join(' → ')} are the API's`);
  check(await page.locator('.answer [data-conversion]').innerText() === pctText(answer.conversion_rate), `funnel: the conversion ${pctText(answer.conversion_rate)} is the API's`);
  const drop = await page.locator('.answer .funnel-step').nth(1).innerText();
  check(drop.includes(`${answer.steps[1].dropped_from_previous.toLocaleString('en')} dropped off`) && /median time to convert/.test(drop), 'funnel: drop-off and time to convert are shown');
  await visit(page, 'insights-funnel');

  // Retention: weekly cohorts, four periods.
  await page.getByRole('button', { name: 'Retention', exact: true }).click();
  await page.getByLabel('Start event').fill('signed_up');
  await page.getByLabel('Return event').fill('task_completed');
  await page.getByLabel('Period', { exact: true }).selectOption('week');
  await page.getByLabel('Periods').fill('4');
  sent = await runInsight(page, 'retention');
  answer = (await must('POST', `${P}/insights/retention`, sent)).result;
  shown = await chartTable(page.locator('.answer'));
  check(answer.length === 4 && Object.keys(shown).length === 4, 'retention: four cohorts shown');
  for (const c of answer) {
    check(shown[c.label] && numberOf(shown[c.label][0]) === c.size && same(shown[c.label].slice(1).map(Number), c.values),
      `retention: cohort ${c.label} of ${c.size} returns ${c.values.join('/')}`);
  }
  await visit(page, 'insights-retention');

  // Stickiness.
  await page.getByRole('button', { name: 'Stickiness', exact: true }).click();
  await page.getByLabel('Event', { exact: true }).fill('task_completed');
  sent = await runInsight(page, 'stickiness');
  answer = (await must('POST', `${P}/insights/stickiness`, sent)).result;
  shown = await chartTable(page.locator('.answer'));
  check(same(shown[answer.label].slice(1).map(numberOf), answer.data), `stickiness: persons per active days ${answer.data.join('/')}`);
  await visit(page, 'insights-stickiness');

  // Lifecycle, then saved to a new dashboard.
  await page.getByRole('button', { name: 'Lifecycle', exact: true }).click();
  await page.getByLabel('Event', { exact: true }).fill('$pageview');
  sent = await runInsight(page, 'lifecycle');
  answer = (await must('POST', `${P}/insights/lifecycle`, sent)).result;
  shown = await chartTable(page.locator('.answer'));
  for (const k of ['new', 'returning', 'resurrecting', 'dormant']) {
    check(same(shown[k].slice(1).map(numberOf), answer[k]), `lifecycle: ${k} ${answer[k].join('/')}`);
  }
  check(await page.locator('.answer svg rect.bar').count() === 4 * answer.labels.length, 'lifecycle: stacked bars of four states per period');
  await visit(page, 'insights-lifecycle');
  await page.getByRole('button', { name: 'Save to a dashboard' }).click();
  await page.getByLabel('Insight name').fill('Pageview lifecycle');
  await page.getByLabel('New dashboard name').fill('Weekly review');
  await page.getByRole('button', { name: 'Save insight' }).click();
  await page.getByText('Saved to “Weekly review”.').waitFor();
  const dashboards = (await must('GET', `${P}/dashboards`)).results;
  check(dashboards.length === 1 && dashboards[0].insights[0].kind === 'lifecycle' && same(dashboards[0].insights[0].query, sent), 'the dashboard holds the insight as defined');
  await navigating(page, () => nav(page, 'Dashboards').click());
  await navigating(page, () => page.getByRole('link', { name: 'Weekly review' }).click());
  check(await heading(page) === 'Weekly review', 'the dashboard opens');
  const tile = page.locator('section.tile', { has: page.getByRole('heading', { name: 'Pageview lifecycle' }) });
  shown = await chartTable(tile);
  check(same(shown.new.slice(1).map(numberOf), answer.new), 'the dashboard tile runs the saved insight');
  await visit(page, 'dashboard');
  await navigating(page, () => page.getByRole('link', { name: 'Edit Pageview lifecycle in the builder' }).click());
  check(await page.getByRole('button', { name: 'Lifecycle', exact: true }).getAttribute('aria-pressed') === 'true'
    && await page.getByLabel('Event', { exact: true }).inputValue() === '$pageview', 'a tile opens in the builder with its definition');
  await page.locator('.answer[aria-busy="false"] section[data-kind="lifecycle"]').waitFor();
  check(same((await chartTable(page.locator('.answer'))).new.slice(1).map(numberOf), answer.new), 'the reopened insight gives the same answer');
  // Edited in place: another event, run, then updated on its dashboard (still one tile).
  check(await page.locator('[data-editing]').isVisible(), 'the builder says which tile it edits');
  await page.getByLabel('Event', { exact: true }).fill('task_completed');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.locator('.answer[aria-busy="false"] section[data-kind="lifecycle"]').waitFor();
  await navigating(page, () => page.getByRole('button', { name: 'Update on the dashboard' }).click());
  const edited = (await must('GET', `${P}/dashboards/${dashboards[0].key}`)).insights;
  check(edited.length === 1 && edited[0].name === 'Pageview lifecycle' && JSON.stringify(edited[0].query).includes('task_completed'), 'the tile is updated in place');
  check(await heading(page) === 'Weekly review', 'and the dashboard is shown again');

  // ------------------------------------------------------------------ experiments
  await navigating(page, () => nav(page, 'Experiments').click());
  check(await page.getByRole('link', { name: 'Onboarding v2' }).isVisible(), 'the experiment is listed');
  await visit(page, 'experiments');
  await navigating(page, () => page.getByRole('link', { name: 'Onboarding v2' }).click());
  const units = await page.locator('[data-units]').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-units'))));
  check(same(units, results.units), `exposure per variation ${units.join('/')} is the API's`);
  const metric = results.metrics[0];
  const values = await page.locator('[data-metric="activated"] [data-value]').allInnerTexts();
  check(same(values.map(Number), metric.arms.map((a) => Number((a.sum / a.units).toFixed(2)))), `metric values ${values.join(' vs ')}`);
  const chance = metric.analysis.comparisons[0].result.chance_to_win;
  check(await page.locator('[data-metric="activated"] [data-chance]').innerText() === `${pctText(chance)} chance to win`, `chance to win ${pctText(chance)} (Bayesian engine)`);
  check(await page.locator('[data-metric="activated"] svg.ci-svg').count() === 1, 'the lift interval is drawn');
  check(await page.locator('[data-srm]').count() === 0, 'no SRM warning on a balanced split');
  await visit(page, 'experiment');
  await page.getByLabel('Variation to ship').selectOption('1');
  await page.getByLabel('Reason').fill('b activates more');
  await page.getByRole('button', { name: 'Record decision' }).click();
  await navigating(page, () => page.getByRole('button', { name: 'Decide', exact: true }).click());
  const decided = await must('GET', `${P}/experiments/onboarding-v2`);
  check(decided.decision && decided.decision.action === 'ship' && decided.decision.variation === 1, 'shipping b is recorded');
  check(await page.locator('[data-decision="ship"]').count() === 1 && await page.getByRole('button', { name: 'Record decision' }).count() === 0, 'the page shows the decision and no longer offers one');
  await goto(page, `${app}/experiments/pricing-v3`);
  check(await page.locator('[data-srm]').isVisible(), 'a 200/100 split of a 50/50 rule shows the sample-ratio-mismatch warning');
  await visit(page, 'experiment-srm');
  // A metric and an experiment made in the forms, then started.
  await navigating(page, () => nav(page, 'Experiments').click());
  await page.getByLabel('Metric name').fill('Tasks done');
  await page.getByLabel('Metric key').fill('tasks-done');
  await page.getByLabel('Kind').selectOption('count');
  await page.getByLabel('Event', { exact: true }).fill('task_completed');
  await page.getByRole('button', { name: 'Create metric' }).click();
  await page.getByText('tasks-done', { exact: true }).waitFor();
  const tasks = await must('GET', `${P}/metrics/tasks-done`);
  check(tasks.kind === 'count' && tasks.event === 'task_completed', 'the metric form creates a count metric');
  await page.getByRole('button', { name: 'New experiment' }).click();
  await page.getByRole('button', { name: 'Create experiment' }).click();
  await page.locator('.field-error').first().waitFor();
  check(await page.getByLabel('Name', { exact: true }).getAttribute('aria-invalid') === 'true', 'an experiment without a name is refused at the field');
  await page.getByLabel('Name', { exact: true }).fill('Pricing page tasks');
  check(await page.getByLabel('Key', { exact: true }).inputValue() === 'pricing-page-tasks', 'the key follows the name');
  await page.getByLabel('Experiment rule').selectOption({ label: 'pricing-page · production · rule exp (2 variations)' });
  await page.locator('[data-field="metrics.primary"]').getByLabel(/Tasks done/).check();
  await page.locator('[data-field="metrics.guardrail"]').getByLabel(/Activated/).check();
  await page.getByLabel('Statistics').selectOption('sequential');
  await navigating(page, () => page.getByRole('button', { name: 'Create experiment' }).click());
  const madeExp = await must('GET', `${P}/experiments/pricing-page-tasks`);
  check(madeExp.feature === 'pricing-page' && madeExp.rule_id === 'exp' && same(madeExp.metrics.primary, ['tasks-done'])
    && same(madeExp.metrics.guardrail, ['activated']) && madeExp.analysis.engine === 'sequential' && madeExp.status === 'draft', 'the experiment form creates the draft as filled in');
  await visit(page, 'experiment-new');
  await navigating(page, () => page.getByRole('button', { name: 'Start experiment' }).click());
  check((await must('GET', `${P}/experiments/pricing-page-tasks`)).status === 'running', 'starting from the page starts it');
  check(await page.getByRole('button', { name: 'Stop experiment' }).isVisible(), 'a running experiment offers to stop');

  // ------------------------------------------------------------------ growth: approve the held referral
  await navigating(page, () => nav(page, 'Growth').click());
  await visit(page, 'growth');
  await navigating(page, () => page.getByRole('link', { name: 'Invite friends' }).click());
  const queue = page.locator('[data-review-queue]');
  check(await queue.getByRole('link', { name: 'held-1' }).isVisible(), 'the held referral is in the review queue');
  check(/disposable_email/.test(await queue.innerText()), 'with the signal that held it');
  const funnelCounts = await page.locator('.funnel-count').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-count'))));
  check(same(funnelCounts, [2, 1, 1]), `program funnel sign-ups → qualified → rewarded: ${funnelCounts.join(' → ')}`);
  await visit(page, 'growth-program');
  await queue.getByRole('button', { name: `Approve referral ${heldReferral.id}` }).click();
  await queue.locator('.field-error').waitFor();
  check(await queue.getByLabel(`Reason for referral ${heldReferral.id}`).getAttribute('aria-invalid') === 'true', 'approving without a reason shows the error at the reason');
  await queue.getByLabel(`Reason for referral ${heldReferral.id}`).fill('known customer');
  await navigating(page, () => queue.getByRole('button', { name: `Approve referral ${heldReferral.id}` }).click());
  const after = (await must('GET', `${P}/referral-programs/friends/referrals`)).results.find((r) => r.id === heldReferral.id);
  check(after.status === 'qualified', `the approved referral is ${after.status}`);
  check(/Nothing waiting for review/.test(await page.locator('[data-review-queue]').innerText()), 'the queue is empty after the approval');
  await navigating(page, () => nav(page, 'Growth').click());
  await navigating(page, () => page.getByRole('link', { name: 'Reward ledger' }).click());
  check(await page.locator('tbody tr').count() === 2, 'the ledger lists both referrer rewards');
  await visit(page, 'growth-rewards');
  // The growth graph: ref-owner brought held-1 and honest-1 (both referrals stand after the approval).
  await navigating(page, () => page.getByRole('link', { name: 'Growth graph' }).click());
  const graph = await must('GET', `${P}/growth/graph?limit=300`);
  check(graph.edges.length >= 2 && await page.locator('svg.graph-svg .graph-edge').count() === graph.edges.length, `the graph draws the API's ${graph.edges.length} edges`);
  check(await page.locator('svg.graph-svg [data-node]').count() === graph.nodes.length, `and its ${graph.nodes.length} persons`);
  check(await page.locator('.graph-table tbody tr').count() === graph.edges.length, 'the edges are also a table');
  await visit(page, 'growth-graph');
  await navigating(page, () => page.locator('svg.graph-svg a[data-node="honest-1"]').click());
  check(/honest/.test(await heading(page)), 'a node opens the person');
  await navigating(page, () => page.getByRole('link', { name: 'Show in the growth graph' }).click());
  const around = await must('GET', `${P}/growth/graph?person=honest-1&depth=3&limit=300`);
  check(around.edges.length === 1 && await page.locator('svg.graph-svg .graph-edge').count() === 1
    && await page.locator('svg.graph-svg .graph-center').count() === 1, "the person's neighbourhood: who brought them, centred on them");
  await visit(page, 'growth-graph-person');

  // Accounts: find a generated company, open it, invite someone, revoke the invitation.
  const member = (await must('GET', `${P}/persons?search=user_3&limit=25`)).results.find((p) => p.distinct_ids.some((d) => d.startsWith('user_3')));
  const account = (await must('GET', `${P}/persons/${encodeURIComponent(member.distinct_ids.find((d) => d.startsWith('user_3')))}`)).groups[0];
  await navigating(page, () => nav(page, 'Accounts').click());
  const allAccounts = (await must('GET', `${P}/groups?limit=100`)).results;
  check(allAccounts.length > 0 && await page.locator('main tbody tr').count() === allAccounts.length, `the account list shows the API's ${allAccounts.length} accounts`);
  await page.getByLabel('Search accounts').fill(account.group_key);
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.getByText(/match “/).waitFor();
  const matching = (await must('GET', `${P}/groups?search=${encodeURIComponent(account.group_key)}&limit=100`)).results;
  check(await page.locator('main tbody tr').count() === matching.length, `the search lists the API's ${matching.length} matching accounts`);
  await visit(page, 'accounts');
  await navigating(page, () => page.locator(`main a[href$="/accounts/${encodeURIComponent(account.group_type)}/${encodeURIComponent(account.group_key)}"]`).first().click());
  const detail = await must('GET', `${P}/groups/${encodeURIComponent(account.group_type)}/${encodeURIComponent(account.group_key)}?members_limit=200`);
  check(await page.locator('section[aria-labelledby="a-members"] tbody tr').count() === detail.member_list.length, `the account lists its ${detail.member_list.length} members`);
  check(detail.member_list.some((p) => p.id === member.id), 'the person who named the account is a member');
  await page.getByLabel('Email', { exact: true }).fill('new.teammate@example.com');
  await page.getByLabel('Inviter (distinct id)').fill(member.distinct_ids[0]);
  await page.getByRole('button', { name: 'Invite', exact: true }).click();
  await page.locator('[data-secret]').waitFor();
  check((await page.locator('[data-secret]').innerText()).length > 20, 'the invitation token is shown once');
  await page.getByRole('cell', { name: 'new.teammate@example.com' }).waitFor();
  await visit(page, 'account');
  await page.getByRole('button', { name: 'Revoke the invitation to new.teammate@example.com' }).click();
  await page.getByText('Invitation for new.teammate@example.com revoked.').waitFor();
  const invitations = (await must('GET', `${P}/groups/${account.group_type}/${account.group_key}/invitations`)).results;
  check(invitations.some((i) => i.email === 'new.teammate@example.com' && i.status === 'revoked'), 'revoking from the page revokes the invitation');
  // Every account's invitations, by status.
  await navigating(page, () => nav(page, 'Growth').click());
  await navigating(page, () => page.getByRole('link', { name: 'Account invitations' }).click());
  check(await page.getByRole('cell', { name: 'new.teammate@example.com' }).isVisible(), "the project's invitation list has it");
  await navigating(page, () => page.getByLabel('Status').selectOption('pending'));
  const pendingInvitations = (await must('GET', `${P}/invitations?status=pending`)).results;
  check(await page.getByRole('cell', { name: 'new.teammate@example.com' }).count() === 0
    && await page.locator('main tbody tr').count() === pendingInvitations.length, `filtered to pending: the API's ${pendingInvitations.length}`);
  await visit(page, 'growth-invitations');
  await navigating(page, () => page.getByRole('link', { name: 'K-factor and PQL' }).click());
  await visit(page, 'growth-loops');

  // ------------------------------------------------------------------ cohorts: dynamic and static, made in the form
  await navigating(page, () => nav(page, 'Cohorts').click());
  await page.getByRole('button', { name: 'New cohort' }).click();
  await page.getByLabel('Name', { exact: true }).fill('Busy users');
  await page.getByLabel('Condition kind').selectOption('behavioral');
  await page.getByRole('button', { name: 'Create cohort' }).click();
  await page.locator('.field-error').first().waitFor();
  check(await page.locator('[data-field="filters"]').getAttribute('aria-invalid') === 'true', 'a condition without its event is refused at the conditions');
  await page.getByLabel('Event', { exact: true }).fill('task_completed');
  await page.getByLabel('At least (times)').fill('3');
  await navigating(page, () => page.getByRole('button', { name: 'Create cohort' }).click());
  const busy = (await must('GET', `${P}/cohorts`)).results.find((c) => c.name === 'Busy users');
  check(busy && !busy.is_static && busy.filters.properties.values[0].operator_value === 3, 'the dynamic cohort is saved as filled in');
  const busyPersons = await must('GET', `${P}/cohorts/${busy.id}/persons?limit=100`);
  check(busy.count > 0 && await page.locator('section[aria-labelledby="persons-title"] tbody tr').count() === Math.min(100, busyPersons.count), `the cohort page lists its persons (${busy.count})`);
  await visit(page, 'cohort');
  await navigating(page, () => page.getByRole('link', { name: 'Cohorts', exact: true }).first().click());
  await page.getByRole('button', { name: 'New cohort' }).click();
  await page.getByLabel('Name', { exact: true }).fill('Hand picked');
  await page.getByLabel('Kind', { exact: true }).selectOption('static');
  await page.getByLabel('Distinct ids (one per line)').fill('honest-1\nheld-1');
  await navigating(page, () => page.getByRole('button', { name: 'Create cohort' }).click());
  const picked = (await must('GET', `${P}/cohorts`)).results.find((c) => c.name === 'Hand picked');
  check(picked && picked.is_static && picked.count === 2, 'the static cohort holds the two persons listed');
  await page.getByLabel('Distinct ids (one per line)').fill('held-1');
  await page.getByRole('button', { name: 'Remove', exact: true }).click();
  await page.getByText('Members removed.').waitFor();
  check((await must('GET', `${P}/cohorts/${picked.id}`)).count === 1, 'removing a member from the page removes it');
  await navigating(page, () => nav(page, 'Cohorts').click());
  check(await page.locator(`[data-count]`).count() === 2, 'the list shows both cohorts with their sizes');
  await visit(page, 'cohorts');

  // ------------------------------------------------------------------ persons: search, profile, export, erase
  await navigating(page, () => nav(page, 'Persons').click());
  await page.getByLabel('Search persons').fill('user_12');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByText(/match “user_12”/).waitFor();
  const found = (await must('GET', `${P}/persons?search=user_12&limit=50`)).results;
  check(found.length > 0 && await page.locator('main tbody tr').count() === found.length, `the search lists the API's ${found.length} matches`);
  await visit(page, 'persons');
  const target = found[0];
  await navigating(page, () => page.getByRole('link', { name: target.properties.email || target.distinct_ids[0] }).first().click());
  check(same(await page.locator('[data-distinct-ids] li').allInnerTexts(), target.distinct_ids), 'the profile lists every distinct id');
  await page.locator('.timeline-item').first().waitFor();
  const events = (await must('GET', `${P}/events?person_id=${target.id}&limit=50`)).results;
  check(await page.locator('.timeline-item').count() === events.length, `the timeline shows the person's ${events.length} newest events`);
  await visit(page, 'person');
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Export data (GDPR)' }).click()]);
  const exported = readFileSync(await download.path(), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  check(exported[0].type === 'person' && same(exported[0].distinct_ids, target.distinct_ids)
    && exported.filter((l) => l.type === 'event').length >= events.length, `the export downloads the person and their events (${exported.length} lines)`);
  await page.getByRole('button', { name: 'Erase person' }).click();
  check(await page.getByRole('dialog').isVisible(), 'erasing asks for confirmation');
  await page.getByRole('button', { name: 'Cancel' }).click();
  check((await api('GET', `${P}/persons/${encodeURIComponent(target.distinct_ids[0])}`)).status === 200, 'cancelling keeps the person');
  await page.getByRole('button', { name: 'Erase person' }).click();
  await navigating(page, () => page.getByRole('button', { name: 'Erase for good' }).click());
  check((await api('GET', `${P}/persons/${encodeURIComponent(target.distinct_ids[0])}`)).status === 404, 'the erased person is gone');

  // ------------------------------------------------------------------ settings: project, webhooks
  await navigating(page, () => nav(page, 'Project').click());
  await page.getByLabel('Time zone').fill('Mars/Olympus');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.locator('.field-error').waitFor();
  check(await page.getByLabel('Time zone').getAttribute('aria-invalid') === 'true', 'an unknown time zone is refused at the field');
  await page.getByLabel('Time zone').fill('Europe/Berlin');
  await page.getByLabel('Data retention (days)').fill('400');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await navigating(page, () => page.getByRole('button', { name: 'Save', exact: true }).last().click());
  const project = await must('GET', P);
  check(project.time_zone === 'Europe/Berlin' && project.retention_days === 400, 'time zone and retention are saved');
  await visit(page, 'settings-project');
  await navigating(page, () => nav(page, 'Webhooks').click());
  await page.getByLabel('URL').fill('http://127.0.0.1:9/hook');
  await page.getByRole('button', { name: 'Create webhook' }).click();
  await page.locator('.field-error').waitFor();
  check(await page.getByLabel('URL').getAttribute('aria-invalid') === 'true', 'a loopback webhook URL is refused at the field');
  await visit(page, 'settings-webhooks');

  // ------------------------------------------------------------------ a viewer changes nothing
  const viewerCtx = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const vpage = await signIn(viewerCtx, VIEWER, 'viewer');
  check(await nav(vpage, 'Webhooks').count() === 0, 'a viewer has no webhooks entry');
  await goto(vpage, `${app}/insights`);
  check(await vpage.getByRole('button', { name: 'Save to a dashboard' }).count() === 0, 'a viewer may run insights but not save them');
  await goto(vpage, `${app}/dashboards/${dashboards[0].key}`);
  check(await vpage.getByRole('button', { name: /Remove|Archive/ }).count() === 0, 'a viewer cannot change a dashboard');
  await goto(vpage, `${app}/experiments/pricing-v3`);
  check(await vpage.getByRole('button', { name: 'Record decision' }).count() === 0, 'a viewer cannot decide an experiment');
  await goto(vpage, `${app}/growth/programs/friends`);
  check(await vpage.locator('main button').count() === 0 && await vpage.locator('main input, main select, main textarea').count() === 0, 'a viewer has no controls on a program');
  await goto(vpage, `${app}/persons/${encodeURIComponent(found[1] ? found[1].distinct_ids[0] : 'honest-1')}`);
  check(await vpage.getByRole('button', { name: 'Erase person' }).count() === 0, 'a viewer cannot erase a person');
  await visit(vpage, 'viewer-person');
  await goto(vpage, `${app}/settings/project`);
  check(await vpage.getByLabel('Time zone').isDisabled() && await vpage.getByRole('button', { name: 'Save', exact: true }).count() === 0, 'a viewer sees the project settings read-only');
  await visit(vpage, 'viewer-settings-project');

  await viewerCtx.close();
  await owner.close();
} catch (err) {
  // What the failing page showed, and anything it logged.
  if (lastPage) await lastPage.screenshot({ path: path.join(artifacts, 'analytics-failure.png'), fullPage: true }).catch(() => {});
  console.log([...problems, ...consoleErrors.slice(-20)].join('\n'));
  console.log(`screenshot of the failing page: ${path.join(artifacts, 'analytics-failure.png')}`);
  throw err;
} finally {
  await browser.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

console.log(`\naxe-core: ${audited.length} page states audited`);
for (const a of audited) console.log(`  ${a.page}: ${a.violations} violation(s), ${a.serious} serious or critical`);
if (violations.length) {
  console.log('serious or critical accessibility violations:');
  for (const v of violations) console.log(`  ${v.page}: ${v.impact} ${v.id} — ${v.help} — ${v.nodes.join(' | ')}`);
}
check(violations.length === 0, 'no serious or critical accessibility violation on any page');
if (problems.length) console.log(problems.join('\n'));
check(problems.length === 0, 'no uncaught error and no Content-Security-Policy violation in any page');
console.log(`screenshots: ${artifacts}`);
console.log('all checks passed');
console.log(`${passed} passed, 0 failed`);
