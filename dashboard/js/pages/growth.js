// Growth: referral programs (list, setup form, each program's funnel clicks → sign-ups → qualified → rewarded, the
// review queue of held referrals with approve/reject and a reason, referrals, codes, leaderboard), the reward ledger,
// K-factor over time and the PQL leaderboard. Members act; viewers read.
import { get, post, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate, render } from '../router.js';
import { app } from '../shell.js';
import { time } from '../format.js';
import {
  badge, button, emptyState, field, formSummary, input, pageHeader, section, select, submitting, table, toast,
} from '../ui.js';
import { funnelBars, num, seriesChart, seriesTable } from '../insights/charts.js';
import { personPath } from './persons.js';
import { invitationFilter, projectInvitations } from './accounts.js';
import { graphPage } from './graph.js';

const programPath = (key) => app.path(`/growth/programs/${encodeURIComponent(key)}`);
const STATUS_KIND = { qualified: 'on', rewarded: 'on', held: 'tag', rejected: 'off', reversed: 'off', capped: 'off' };

function tabs(current) {
  const items = [['/growth', 'Referral programs'], ['/growth/rewards', 'Reward ledger'], ['/growth/invitations', 'Account invitations'],
    ['/growth/graph', 'Growth graph'], ['/growth/loops', 'K-factor and PQL']];
  return h('nav', { class: 'tabs', 'aria-label': 'Growth' }, h('ul', items.map(([p, label]) => h('li',
    h('a', { href: app.path(p), class: 'tab', 'aria-current': current === p ? 'page' : undefined }, label)))));
}

function programForm(onCancel) {
  const f = {
    key: input({ required: true, autocomplete: 'off', spellcheck: 'false' }),
    name: input({ required: true, autocomplete: 'off' }),
    landing: input({ type: 'url', required: true, placeholder: 'https://app.example.com/signup' }),
    event: input({ required: true, value: 'subscription_started', spellcheck: 'false' }),
    within: input({ type: 'number', min: 1, value: 30 }),
    amount: input({ type: 'number', min: 0, step: 'any', value: 20 }),
    unit: input({ value: 'USD' }),
    hold: input({ type: 'number', min: 0, value: 14 }),
    holdAt: input({ type: 'number', min: 0, max: 100, value: 40 }),
    rejectAt: input({ type: 'number', min: 0, max: 100, value: 80 }),
  };
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'new-program-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const n = (el) => (el.value.trim() === '' ? undefined : Number(el.value));
      const body = {
        key: f.key.value.trim(),
        name: f.name.value.trim(),
        landing_url: f.landing.value.trim(),
        qualify: { event: f.event.value.trim(), within_days: n(f.within) },
        rewards: { referrer: { amount: n(f.amount), unit: f.unit.value.trim() } },
        hold_days: n(f.hold),
        fraud: { hold_at: n(f.holdAt), reject_at: n(f.rejectAt) },
      };
      const made = await submitting(form, () => post(projectPath(app.project.id, '/referral-programs'), body), 'Creating…');
      if (made) navigate(programPath(made.key));
    },
  },
  h('h2', { id: 'new-program-title' }, 'New referral program'),
  formSummary(),
  h('div', { class: 'grid-2' },
    field({ label: 'Name', name: 'name', control: f.name }),
    field({ label: 'Key', name: 'key', control: f.key, hint: 'Letters, digits, - _ and .' })),
  field({ label: 'Landing page', name: 'landing_url', control: f.landing, hint: 'Share links point here with ?ref=<code>.' }),
  h('div', { class: 'grid-2' },
    field({ label: 'Qualifying event', name: 'qualify.event', control: f.event, hint: 'The referee qualifies the referral by doing this.' }),
    field({ label: 'Within days of sign-up', name: 'qualify.within_days', control: f.within })),
  h('div', { class: 'grid-3' },
    field({ label: 'Referrer reward', name: 'rewards.referrer.amount', control: f.amount }),
    field({ label: 'Unit', name: 'rewards.referrer.unit', control: f.unit }),
    field({ label: 'Hold (days)', name: 'hold_days', control: f.hold, hint: 'Rewards wait this long for reversals.' })),
  h('div', { class: 'grid-2' },
    field({ label: 'Hold for review at risk score', name: 'fraud.hold_at', control: f.holdAt }),
    field({ label: 'Reject at risk score', name: 'fraud.reject_at', control: f.rejectAt })),
  h('div', { class: 'actions actions-left' }, button('Create program', { type: 'submit', kind: 'primary' }), button('Cancel', { onclick: onCancel })));
  return form;
}

export async function growthPage() {
  const canWrite = app.can('growth:write');
  const formBox = h('div');
  const list = section(() => get(projectPath(app.project.id, '/referral-programs')).then((r) => r.results || []), (rows) => table({
    caption: 'Referral programs',
    rows,
    empty: emptyState('No referral programs yet', canWrite ? 'Create one: referrers get a code, referees arrive with it, and qualifying earns rewards.' : 'Nobody has set up a referral program yet.'),
    columns: [
      { label: 'Program', render: (p) => h('a', { href: programPath(p.key) }, p.name) },
      { label: 'Qualifies on', render: (p) => h('code', p.qualify && p.qualify.event) },
      { label: 'Referrer reward', render: (p) => (p.rewards && p.rewards.referrer ? `${num(p.rewards.referrer.amount)} ${p.rewards.referrer.unit}` : '—') },
      { label: 'Status', render: (p) => badge(p.active ? 'active' : 'paused', p.active ? 'on' : 'off') },
      { label: 'Updated', render: (p) => time(p.updated_at) },
    ],
  }));
  return h('div',
    pageHeader('Growth', {
      subtitle: 'Referral programs, rewards and growth loops.',
      actions: canWrite ? button('New program', { kind: 'primary', onclick: () => { mount(formBox, programForm(() => mount(formBox))); formBox.querySelector('input').focus(); } }) : null,
    }),
    tabs('/growth'), formBox, list);
}

/** One held referral's review: a reason, then approve or reject. */
function reviewRow(program, r) {
  const reason = input({ name: 'reason', autocomplete: 'off', 'aria-label': `Reason for referral ${r.id}` });
  const form = h('form', { class: 'review-form', novalidate: true, onsubmit: (e) => e.preventDefault() }, formSummary());
  const decide = async (action) => {
    const done = await submitting(form, () => post(projectPath(app.project.id, `/referral-programs/${encodeURIComponent(program.key)}/referrals/${r.id}/${action}`), { reason: reason.value.trim() }), action === 'approve' ? 'Approving…' : 'Rejecting…');
    if (done) {
      toast(`Referral ${r.id} ${action === 'approve' ? 'approved' : 'rejected'}.`);
      render();
    }
  };
  form.append(field({ label: 'Reason', name: 'reason', control: reason }),
    h('div', { class: 'actions actions-left' },
      button('Approve', { kind: 'primary', class: 'btn btn-primary btn-small', 'aria-label': `Approve referral ${r.id}`, onclick: () => decide('approve') }),
      button('Reject', { class: 'btn btn-secondary btn-small', 'aria-label': `Reject referral ${r.id}`, onclick: () => decide('reject') })));
  return form;
}

export async function programPage({ params }) {
  const pid = app.project.id;
  const canWrite = app.can('growth:write');
  const base = `/referral-programs/${encodeURIComponent(params.key)}`;
  const program = await get(projectPath(pid, base));
  const body = section(async () => {
    const [referrals, codes, leaderboard, rewards] = await Promise.all([
      get(projectPath(pid, `${base}/referrals${qs({ limit: 1000 })}`)).then((r) => r.results || []),
      get(projectPath(pid, `${base}/codes`)).then((r) => r.results || []),
      get(projectPath(pid, `${base}/leaderboard${qs({ limit: 10 })}`)).then((r) => r.results || []),
      get(projectPath(pid, `/rewards${qs({ limit: 1000 })}`)).then((r) => (r.results || []).filter((x) => x.program === program.key)),
    ]);
    return { referrals, codes, leaderboard, rewards };
  }, ({ referrals, codes, leaderboard, rewards }) => {
    const clicks = codes.reduce((a, c) => a + (c.clicks || 0), 0);
    const qualified = referrals.filter((r) => r.qualified_at && !['held', 'rejected'].includes(r.status)).length;
    const rewarded = new Set(rewards.filter((x) => x.status !== 'reversed').map((x) => (/^referral:(\d+):/.exec(x.idempotency_key || '') || [])[1]).filter(Boolean)).size;
    const steps = [...(clicks ? [['Clicks', clicks]] : []), ['Sign-ups', referrals.length], ['Qualified', qualified], ['Rewarded', rewarded]];
    const first = steps[0][1];
    const funnel = {
      steps: steps.map(([name, count], i) => ({
        name, count,
        conversion_from_first: first ? count / first : 0,
        conversion_from_previous: i && steps[i - 1][1] ? count / steps[i - 1][1] : 1,
        dropped_from_previous: i ? Math.max(steps[i - 1][1] - count, 0) : 0,
        median_conversion_time_s: null,
      })),
    };
    const held = referrals.filter((r) => r.status === 'held');
    return h('div',
      h('section', { class: 'card', 'aria-labelledby': 'funnel-title' }, h('h2', { id: 'funnel-title' }, 'Funnel'),
        clicks === 0 ? h('p', { class: 'muted small' }, 'No tracked clicks (share links count them): the funnel starts at sign-up.') : null,
        funnelBars(funnel)),
      h('section', { class: 'card', 'aria-labelledby': 'queue-title', 'data-review-queue': '' }, h('h2', { id: 'queue-title' }, `Review queue (${held.length})`),
        table({
          caption: 'Held referrals',
          rows: held,
          empty: h('p', { class: 'empty-inline' }, 'Nothing waiting for review.'),
          columns: [
            { label: 'Referee', render: (r) => h('a', { href: personPath(r.referee) }, r.referee) },
            { label: 'Referrer', render: (r) => h('a', { href: personPath(r.referrer) }, r.referrer) },
            { label: 'Risk', render: (r) => h('div', h('strong', String(r.risk_score)), ' ', h('ul', { class: 'inline-list' }, (r.signals || []).map((sg) => h('li', badge(sg, 'tag'))))) },
            { label: canWrite ? 'Decision' : 'Qualified', render: (r) => (canWrite ? reviewRow(program, r) : time(r.qualified_at)) },
          ],
        })),
      h('div', { class: 'grid-2' },
        h('section', { class: 'card', 'aria-labelledby': 'leader-title' }, h('h2', { id: 'leader-title' }, 'Leaderboard'),
          table({
            caption: 'Top referrers', rows: leaderboard, empty: h('p', { class: 'empty-inline' }, 'No referrers yet.'),
            columns: [
              { label: 'Rank', render: (r) => String(r.rank) },
              { label: 'Referrer', render: (r) => h('a', { href: personPath(r.referrer) }, r.referrer) },
              { label: 'Qualified', class: 'num', render: (r) => num(r.qualified) },
              { label: 'Referrals', class: 'num', render: (r) => num(r.referrals) },
            ],
          })),
        h('section', { class: 'card', 'aria-labelledby': 'codes-title' }, h('h2', { id: 'codes-title' }, 'Codes'),
          table({
            caption: 'Referral codes', rows: codes, empty: h('p', { class: 'empty-inline' }, 'No codes yet.'),
            columns: [
              { label: 'Code', render: (c) => h('code', c.code) },
              { label: 'Referrer', render: (c) => c.referrer },
              { label: 'Clicks', class: 'num', render: (c) => num(c.clicks) },
            ],
          }))),
      h('section', { class: 'card', 'aria-labelledby': 'refs-title' }, h('h2', { id: 'refs-title' }, 'Referrals'),
        table({
          caption: 'Referrals', rows: referrals, empty: h('p', { class: 'empty-inline' }, 'No referrals yet.'),
          columns: [
            { label: 'Id', render: (r) => String(r.id) },
            { label: 'Referee', render: (r) => r.referee },
            { label: 'Referrer', render: (r) => r.referrer },
            { label: 'Status', render: (r) => badge(r.status, STATUS_KIND[r.status] || 'neutral') },
            { label: 'Risk', class: 'num', render: (r) => String(r.risk_score) },
            { label: 'Attributed', render: (r) => time(r.attributed_at) },
          ],
        })));
  });
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/growth') }, 'Growth')),
    pageHeader(program.name, { subtitle: `Qualifies on ${program.qualify.event}; referrer earns ${program.rewards.referrer ? `${num(program.rewards.referrer.amount)} ${program.rewards.referrer.unit}` : 'nothing'}; rewards held ${program.hold_days} days.` }),
    body);
}

export async function rewardsPage({ query }) {
  const pid = app.project.id;
  const canWrite = app.can('growth:write');
  const status = query.get('status') || '';
  const act = async (entry, action) => {
    try {
      await post(projectPath(pid, `/rewards/${entry.id}/${action}`), { reason: `${action} from the dashboard` });
      toast(`Reward ${entry.id}: ${action} done.`);
      render();
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  const filter = select([['', 'Every status'], 'pending', 'approved', 'fulfilled', 'reversed'], status, {
    onchange: (e) => navigate(`${app.path('/growth/rewards')}${qs({ status: e.target.value })}`),
  });
  const list = section(() => get(projectPath(pid, `/rewards${qs({ status, limit: 200 })}`)).then((r) => r.results || []), (rows) => {
    // Totals of the entries shown, per unit and status.
    const totals = new Map();
    for (const x of rows) {
      const t = totals.get(x.unit) || {};
      t[x.status] = (t[x.status] || 0) + x.amount;
      totals.set(x.unit, t);
    }
    return h('div',
    totals.size ? h('dl', { class: 'facts card', 'aria-label': 'Totals of the entries shown' }, [...totals].map(([unit, t]) => [
      h('dt', unit), h('dd', Object.entries(t).map(([st, amount]) => `${st} ${num(amount)}`).join(' · '))])) : null,
    table({
      caption: 'Reward ledger', rows,
      empty: emptyState('No rewards', 'Rewards appear when referrals qualify, or when written through the API.'),
      columns: [
        { label: 'Id', render: (x) => String(x.id) },
        { label: 'Beneficiary', render: (x) => h('a', { href: personPath(x.beneficiary) }, x.beneficiary) },
        { label: 'Amount', class: 'num', render: (x) => `${num(x.amount)} ${x.unit}` },
        { label: 'Reason', render: (x) => x.reason },
        { label: 'Status', render: (x) => h('div', badge(x.status, x.status === 'fulfilled' ? 'on' : x.status === 'reversed' ? 'off' : 'neutral'), x.hold_until && x.status === 'pending' ? h('p', { class: 'muted small' }, 'held until ', time(x.hold_until)) : null) },
        canWrite ? {
          label: 'Actions',
          render: (x) => h('div', { class: 'actions actions-left' },
            x.status === 'pending' ? button('Approve', { class: 'btn btn-secondary btn-small', 'aria-label': `Approve reward ${x.id}`, onclick: () => act(x, 'approve') }) : null,
            x.status === 'approved' ? button('Fulfil', { class: 'btn btn-secondary btn-small', 'aria-label': `Fulfil reward ${x.id}`, onclick: () => act(x, 'fulfil') }) : null,
            x.status === 'pending' || x.status === 'approved' ? button('Reverse', { class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Reverse reward ${x.id}`, onclick: () => act(x, 'reverse') }) : null),
        } : null,
      ].filter(Boolean),
    }));
  });
  return h('div', pageHeader('Reward ledger', { subtitle: 'Every reward, append-only: pending → approved → fulfilled, or reversed.' }),
    tabs('/growth/rewards'), field({ label: 'Status', name: 'status', control: filter }), list);
}

export async function loopsPage({ query }) {
  const pid = app.project.id;
  const interval = query.get('interval') || 'week';
  const kfactor = section(() => get(projectPath(pid, `/growth/k-factor${qs({ interval })}`)), (v) => {
    const cohorts = v.cohorts || [];
    const labels = cohorts.map((c) => c.cohort);
    const channels = ['all', 'referral', 'invitation', 'share'];
    const series = channels.map((ch) => ({
      label: ch,
      data: cohorts.map((c) => (c.channels && c.channels[ch] && c.channels[ch].k_factor) || 0),
      total: v.totals && v.totals.channels && v.totals.channels[ch] ? v.totals.channels[ch].k_factor : null,
    }));
    const users = [{ label: 'joined', data: cohorts.map((c) => c.users || 0), total: v.totals ? v.totals.users : null }];
    return h('div',
      h('p', { class: 'muted small' }, `K-factor = invitees who joined ÷ users of the cohort, by ${v.interval} in ${v.time_zone}. The total column is the whole range.`),
      seriesChart({ title: 'K-factor', labels, series, type: 'line' }),
      seriesTable({ caption: 'K-factor per cohort and channel', labels, series }),
      seriesTable({ caption: 'Users who joined per cohort', labels, series: users }));
  });
  const pql = section(async () => {
    const models = (await get(projectPath(pid, '/pql-models'))).results || [];
    return Promise.all(models.slice(0, 5).map(async (m) => ({ model: m, scores: (await get(projectPath(pid, `/pql-models/${encodeURIComponent(m.key)}/scores${qs({ limit: 10 })}`))).results || [] })));
  }, (items) => (items.length ? h('div', items.map(({ model, scores }) => h('div',
    h('h3', `${model.name} (threshold ${num(model.threshold)})`),
    table({
      caption: `${model.name}: top scores`, rows: scores, empty: h('p', { class: 'empty-inline' }, 'Not scored yet.'),
      columns: [
        { label: 'Entity', render: (x) => (model.unit && model.unit !== 'person' ? x.label : h('a', { href: personPath(x.label) }, x.label)) },
        { label: 'Score', class: 'num', render: (x) => num(x.score) },
        { label: 'Qualified', render: (x) => (x.qualified ? badge('qualified', 'on') : badge('no', 'off')) },
        { label: 'Why', render: (x) => (x.disqualified_by ? `disqualified by ${x.disqualified_by}` : (x.explanation || []).map((e) => `${e.rule} +${num(e.points)}`).join(', ')) },
      ],
    }))))
    : emptyState('No PQL models', 'A PQL model scores persons or accounts by what they do (POST …/pql-models).')));
  const intervalSel = select(['day', 'week', 'month'], interval, { onchange: (e) => navigate(`${app.path('/growth/loops')}${qs({ interval: e.target.value })}`) });
  return h('div', pageHeader('Growth loops', { subtitle: 'How many new users each cohort brings in, and who is ready to buy.' }),
    tabs('/growth/loops'),
    h('section', { class: 'card', 'aria-labelledby': 'k-title' }, h('h2', { id: 'k-title' }, 'K-factor over time'), field({ label: 'Cohorts by', name: 'interval', control: intervalSel }), kfactor),
    h('section', { class: 'card', 'aria-labelledby': 'pql-title' }, h('h2', { id: 'pql-title' }, 'PQL leaderboard'), pql));
}


/** `/growth/invitations`: invitations to every account of the project, by status (an account's page invites). */
export async function invitationsPage({ query }) {
  const status = query.get('status') || '';
  return h('div', pageHeader('Account invitations', { subtitle: 'Invitations to join an account (a company, a team), newest first. Invite from the account’s page.' }),
    tabs('/growth/invitations'), invitationFilter(status, app.path('/growth/invitations')), projectInvitations(app.project.id, status));
}

/** `/growth/graph`: who brought whom. */
export function growthGraphPage(ctx) {
  return graphPage(ctx, tabs('/growth/graph'));
}
