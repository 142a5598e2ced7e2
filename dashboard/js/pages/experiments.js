// Experiments: the list, and one experiment's results — units exposed per variation, each metric's value per arm,
// the lift with its interval drawn against zero, chance to win (Bayesian) or p-value (frequentist, sequential), the
// sample-ratio-mismatch banner, guardrails — and the decision (ship a variation, or roll back) for members.
import { get, post, projectPath } from '../api.js';
import { h, mount, s } from '../dom.js';
import { navigate, render } from '../router.js';
import { app } from '../shell.js';
import { time } from '../format.js';
import {
  badge, button, confirmDialog, emptyState, errorPanel, field, formSummary, input, loading, pageHeader, section, select, submitting, table,
  textarea, toast,
} from '../ui.js';
import { num, pct } from '../insights/charts.js';

const expPath = (key) => app.path(`/experiments/${encodeURIComponent(key)}`);
const STATUS_KIND = { running: 'on', draft: 'neutral', stopped: 'off' };

/** Checkboxes for a list of metric keys (a fieldset named like the API field, so errors land on it). */
function metricChecks(name, legend, metrics, checked = []) {
  const box = h('fieldset', { class: 'checks', 'data-field': name, tabindex: '-1' }, h('legend', legend),
    metrics.length ? metrics.map((m) => {
      const id = `${name.replace('.', '-')}-${m.key}`;
      return h('div', { class: 'field field-inline' },
        h('input', { type: 'checkbox', id, value: m.key, checked: checked.includes(m.key), 'data-metric-key': m.key }),
        h('label', { for: id }, m.name, ' ', h('span', { class: 'muted small mono' }, `${m.key} · ${m.kind}`)));
    }) : h('p', { class: 'muted small' }, 'No metrics yet: create one below.'));
  box.values = () => [...box.querySelectorAll('input:checked')].map((i) => i.value);
  return box;
}

/** Every experiment rule of the project's flags: [feature key, environment, rule]. */
async function experimentRules(pid) {
  const features = (await get(projectPath(pid, '/features'))).results || [];
  const out = [];
  for (const f of features) {
    for (const [env, cfg] of Object.entries(f.environments || {})) {
      for (const r of (cfg && cfg.rules) || []) if (r.type === 'experiment') out.push([f.key, env, r]);
    }
  }
  return out;
}

function experimentForm(pid, rules, metrics, onCancel) {
  const name = input({ required: true, autocomplete: 'off' });
  const key = input({ required: true, autocomplete: 'off', spellcheck: 'false' });
  const hypothesis = textarea({ rows: 2 });
  const binding = select(rules.map(([f, env, r], i) => [String(i), `${f} · ${env} · rule ${r.id} (${(r.variations || []).length} variations)`]), '0');
  const primary = metricChecks('metrics.primary', 'Primary metrics (decide on these)', metrics);
  const guardrail = metricChecks('metrics.guardrail', 'Guardrail metrics (must not get worse)', metrics);
  const engine = select([['bayesian', 'Bayesian (chance to win)'], ['frequentist', 'Frequentist (fixed horizon)'], ['sequential', 'Sequential (look any time)']], 'bayesian');
  const cuped = h('input', { type: 'checkbox', checked: true });
  let keyEdited = false;
  key.addEventListener('input', () => { keyEdited = true; });
  name.addEventListener('input', () => {
    if (!keyEdited) key.value = name.value.trim().toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 60);
  });
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'new-exp-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const [feature, environment, rule] = rules[Number(binding.value)] || [];
      const body = {
        key: key.value.trim(), name: name.value.trim(), hypothesis: hypothesis.value.trim() || undefined,
        feature, environment, rule_id: rule && rule.id,
        metrics: { primary: primary.values(), guardrail: guardrail.values() },
        analysis: { engine: engine.value, cuped: cuped.checked },
      };
      const made = await submitting(form, () => post(projectPath(pid, '/experiments'), body), 'Creating…');
      if (made) navigate(expPath(made.key));
    },
  },
  h('h2', { id: 'new-exp-title' }, 'New experiment'),
  formSummary(),
  h('div', { class: 'grid-2' }, field({ label: 'Name', name: 'name', control: name }), field({ label: 'Key', name: 'key', control: key })),
  field({ label: 'Hypothesis', name: 'hypothesis', control: hypothesis, hint: 'What you expect, and why.' }),
  field({ label: 'Experiment rule', name: 'feature', control: binding, hint: 'The flag rule that assigns the variations.' }),
  h('div', { class: 'grid-2' }, primary, guardrail),
  h('div', { class: 'grid-2' }, field({ label: 'Statistics', name: 'analysis.engine', control: engine }),
    field({ label: 'CUPED variance reduction', name: 'analysis.cuped', control: cuped, inline: true })),
  h('div', { class: 'actions actions-left' }, button('Create experiment', { type: 'submit', kind: 'primary' }), button('Cancel', { onclick: onCancel })));
  return form;
}

function metricForm(pid, onMade) {
  const name = input({ required: true, autocomplete: 'off' });
  const key = input({ required: true, autocomplete: 'off', spellcheck: 'false' });
  const kind = select([['conversion', 'Conversion (did the event)'], ['count', 'Count of events'], ['sum', 'Sum of a property']], 'conversion');
  const event = input({ required: true, spellcheck: 'false', placeholder: 'purchase_completed' });
  const property = input({ spellcheck: 'false', placeholder: 'amount' });
  const window = input({ type: 'number', min: 1, placeholder: 'until the end' });
  const inverse = h('input', { type: 'checkbox' });
  const propertyField = field({ label: 'Property to sum', name: 'value_property', control: property });
  propertyField.hidden = true;
  kind.addEventListener('change', () => { propertyField.hidden = kind.value !== 'sum'; });
  const form = h('form', {
    class: 'form', novalidate: true, 'aria-labelledby': 'new-metric-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { key: key.value.trim(), name: name.value.trim(), kind: kind.value, event: event.value.trim(), inverse: inverse.checked };
      if (kind.value === 'sum') body.value_property = property.value.trim();
      if (window.value.trim()) body.window_hours = Number(window.value);
      const made = await submitting(form, () => post(projectPath(pid, '/metrics'), body), 'Creating…');
      if (made) {
        toast(`Metric ${made.name} created.`);
        form.reset();
        propertyField.hidden = true;
        onMade(made);
      }
    },
  },
  h('h3', { id: 'new-metric-title' }, 'New metric'),
  formSummary(),
  h('div', { class: 'grid-3' }, field({ label: 'Metric name', name: 'name', control: name }), field({ label: 'Metric key', name: 'key', control: key }),
    field({ label: 'Kind', name: 'kind', control: kind })),
  h('div', { class: 'grid-3' }, field({ label: 'Event', name: 'event', control: event }), propertyField,
    field({ label: 'Window (hours after exposure)', name: 'window_hours', control: window })),
  field({ label: 'Lower is better', name: 'inverse', control: inverse, inline: true }),
  h('div', { class: 'actions actions-left' }, button('Create metric', { type: 'submit', kind: 'primary' })));
  return form;
}

export async function experimentsPage() {
  const pid = app.project.id;
  const canWrite = app.can('experiments:write');
  const formBox = h('div');
  const list = section(() => get(projectPath(pid, '/experiments')).then((r) => r.results || []), (rows) => table({
    caption: 'Experiments',
    rows,
    empty: emptyState('No experiments yet', canWrite ? 'An experiment analyses a flag’s experiment rule: create one with “New experiment”.' : 'Nobody has created an experiment yet.'),
    columns: [
      { label: 'Experiment', render: (x) => h('div', h('a', { href: expPath(x.key) }, x.name), h('p', { class: 'muted small mono' }, x.key)) },
      { label: 'Flag', render: (x) => h('span', { class: 'mono' }, `${x.feature} · ${x.rule_id}`) },
      { label: 'Status', render: (x) => badge(x.decision ? `decided: ${x.decision.action}` : x.status, STATUS_KIND[x.status] || 'neutral') },
      { label: 'Engine', render: (x) => (x.analysis && x.analysis.engine) || '—' },
      { label: 'Created', render: (x) => time(x.created_at) },
    ],
  }));
  const metricsBox = h('div');
  const metricList = () => section(() => get(projectPath(pid, '/metrics')).then((r) => r.results || []), (rows) => table({
    caption: 'Metrics',
    rows,
    empty: h('p', { class: 'empty-inline' }, 'No metrics yet.'),
    columns: [
      { label: 'Metric', render: (m) => h('div', m.name, h('p', { class: 'muted small mono' }, m.key)) },
      { label: 'Kind', render: (m) => m.kind },
      { label: 'Event', render: (m) => h('code', m.event || (m.numerator && m.numerator.event) || '—') },
      { label: 'Better', render: (m) => (m.inverse ? 'lower' : 'higher') },
    ],
  }));
  mount(metricsBox, metricList());
  const open = async () => {
    mount(formBox, loading());
    try {
      const [rules, metrics] = await Promise.all([experimentRules(pid), get(projectPath(pid, '/metrics')).then((r) => r.results || [])]);
      if (!rules.length) {
        mount(formBox, h('div', { class: 'notice' }, 'No flag has an experiment rule yet. Add one on a flag’s page (rule type “Experiment”), then create the experiment here. ',
          h('a', { href: app.path('/flags') }, 'Feature flags')));
        return;
      }
      mount(formBox, experimentForm(pid, rules, metrics, () => mount(formBox)));
      formBox.querySelector('input').focus();
    } catch (err) {
      mount(formBox, errorPanel(err, open));
    }
  };
  return h('div',
    pageHeader('Experiments', {
      subtitle: 'Results of the experiments on your feature flags.',
      actions: canWrite ? button('New experiment', { kind: 'primary', onclick: open }) : null,
    }),
    formBox, list,
    h('section', { class: 'card', 'aria-labelledby': 'metrics-title' }, h('h2', { id: 'metrics-title' }, 'Metrics'),
      h('p', { class: 'muted small' }, 'What experiments measure, per unit, in a window after its first exposure.'),
      metricsBox,
      canWrite ? metricForm(pid, () => { mount(metricsBox, metricList()); if (formBox.firstChild) open(); }) : null));
}

/** The lift and its interval as a small horizontal chart around zero. */
function intervalChart(result, label) {
  const ci = result && result.ci;
  if (!ci || ci.lower === undefined || ci.lower === null) return '—';
  const lo = Math.min(ci.lower, 0);
  const hi = Math.max(ci.upper, 0);
  const span = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  const x = (v) => 100 + (v / span) * 90;
  const good = ci.lower > 0 ? 'ci-win' : ci.upper < 0 ? 'ci-lose' : 'ci-flat';
  const rel = result.lift !== 'absolute';
  const fmt = (v) => (rel ? pct(v) : num(v));
  return h('div', { class: 'ci' },
    s('svg', { viewBox: '0 0 200 24', class: 'ci-svg', role: 'img', 'aria-label': `${label}: interval from ${fmt(ci.lower)} to ${fmt(ci.upper)}, expected ${fmt(result.expected)}` },
      s('line', { x1: 100, x2: 100, y1: 2, y2: 22, class: 'ci-zero' }),
      s('rect', { x: x(ci.lower).toFixed(1), y: 8, width: Math.max(x(ci.upper) - x(ci.lower), 1).toFixed(1), height: 8, rx: 3, class: `ci-bar ${good}` }),
      result.expected !== undefined ? s('circle', { cx: x(result.expected).toFixed(1), cy: 12, r: 3.5, class: 'ci-mean' }) : null),
    h('span', { class: 'small muted' }, `${fmt(ci.lower)} to ${fmt(ci.upper)}`));
}

function significance(cmp, engine) {
  const r = cmp.result || {};
  if (r.chance_to_win !== undefined) return h('span', { 'data-chance': String(r.chance_to_win) }, `${pct(r.chance_to_win)} chance to win`);
  if (r.p_value !== undefined) {
    return h('span', { 'data-p-value': String(r.p_value) }, `p = ${Number(r.p_value).toPrecision(3)}`,
      cmp.adjusted_p_value !== undefined ? ` (adjusted ${Number(cmp.adjusted_p_value).toPrecision(3)})` : '');
  }
  return engine || '—';
}

function metricTable(metric, variations, engine) {
  const cmps = new Map(((metric.analysis && metric.analysis.comparisons) || []).map((c) => [c.arm, c]));
  const rows = (metric.arms || []).map((arm, i) => ({ arm, i, cmp: cmps.get(i) }));
  return h('section', { class: 'card metric', 'data-metric': metric.key },
    h('h3', metric.name, ' ', badge(metric.role, metric.role === 'guardrail' ? 'tag' : 'neutral'), metric.inverse ? h('span', { class: 'muted small' }, ' (lower is better)') : null),
    table({
      caption: `${metric.name} by variation`,
      rows,
      columns: [
        { label: 'Variation', render: (r) => variations[r.i] || `arm ${r.i}` },
        { label: 'Units', class: 'num', render: (r) => num(r.arm.units) },
        { label: 'Value', class: 'num', render: (r) => h('span', { 'data-value': '' }, num(r.arm.units ? r.arm.sum / r.arm.units : 0)) },
        { label: 'Lift', render: (r) => (r.i === 0 ? h('span', { class: 'muted' }, 'control') : r.cmp && r.cmp.error ? h('span', { class: 'muted' }, r.cmp.error.message) : r.cmp ? intervalChart(r.cmp.result, `${metric.name}, ${variations[r.i] || r.i}`) : '—') },
        { label: engine === 'bayesian' ? 'Chance to win' : 'Significance', render: (r) => (r.i === 0 || !r.cmp || r.cmp.error ? '—' : significance(r.cmp, engine)) },
      ],
    }));
}

function decisionForm(x, variations) {
  const action = select([['ship', 'Ship a variation'], ['rollback', 'Roll back (disable the rule)']], 'ship', { name: 'action' });
  const variation = select(variations.map((v, i) => [String(i), v]), variations.length > 1 ? '1' : '0', { name: 'variation' });
  const reason = textarea({ name: 'reason', rows: 2 });
  const variationField = field({ label: 'Variation to ship', name: 'variation', control: variation });
  action.addEventListener('change', () => { variationField.hidden = action.value !== 'ship'; });
  const form = h('form', {
    class: 'form card', novalidate: true, 'aria-labelledby': 'decide-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const what = action.value === 'ship' ? `Ship “${variations[Number(variation.value)]}” to everyone the rule reaches` : 'Roll back: disable the experiment rule';
      if (!await confirmDialog({ title: 'Decide this experiment?', text: `${what}. The experiment ends and cannot restart.`, confirm: 'Decide', danger: action.value !== 'ship' })) return;
      const body = { action: action.value, reason: reason.value.trim() };
      if (action.value === 'ship') body.variation = Number(variation.value);
      const done = await submitting(form, () => post(projectPath(app.project.id, `/experiments/${encodeURIComponent(x.key)}/decision`), body), 'Deciding…');
      if (done) {
        toast('Decision recorded.');
        render({ focus: true });
      }
    },
  },
  h('h2', { id: 'decide-title' }, 'Decision'),
  formSummary(),
  h('div', { class: 'grid-2' }, field({ label: 'Action', name: 'action', control: action }), variationField),
  field({ label: 'Reason', name: 'reason', control: reason, hint: 'Recorded with the decision in the audit log.' }),
  h('div', { class: 'actions actions-left' }, button('Record decision', { type: 'submit', kind: 'primary' })));
  return form;
}

/** Start a draft or stopped experiment, stop a running one. */
function lifecycleButton(x) {
  const action = x.status === 'running' ? 'stop' : 'start';
  return button(action === 'start' ? (x.status === 'draft' ? 'Start experiment' : 'Restart experiment') : 'Stop experiment', {
    kind: action === 'start' ? 'primary' : 'secondary',
    onclick: async () => {
      if (action === 'stop' && !await confirmDialog({ title: 'Stop this experiment?', text: 'Results stop counting new exposures; you can start it again (a new phase) or decide.', confirm: 'Stop' })) return;
      try {
        await post(projectPath(app.project.id, `/experiments/${encodeURIComponent(x.key)}/${action}`));
        toast(action === 'start' ? 'Experiment started.' : 'Experiment stopped.');
        render({ focus: true });
      } catch (err) {
        toast(err.message, 'error');
      }
    },
  });
}

export async function experimentPage({ params }) {
  const pid = app.project.id;
  const x = await get(projectPath(pid, `/experiments/${encodeURIComponent(params.key)}`));
  const feature = await get(projectPath(pid, `/features/${encodeURIComponent(x.feature)}`)).catch(() => null);
  const rule = feature && feature.environments && feature.environments[x.environment]
    ? (feature.environments[x.environment].rules || []).find((r) => r.id === x.rule_id) : null;
  const canDecide = app.can('experiments:write');
  const results = section(() => get(projectPath(pid, `/experiments/${encodeURIComponent(x.key)}/results`)), (res) => {
    const variations = rule && rule.variations ? rule.variations.map(String)
      : (res.units || []).map((_, i) => (i === 0 ? 'control' : `variation ${i}`));
    const metrics = res.metrics || [];
    const guardrails = metrics.filter((m) => m.role === 'guardrail');
    const failing = guardrails.filter((m) => ((m.analysis && m.analysis.comparisons) || []).some((c) => {
      const ci = c.result && c.result.ci;
      return ci && (m.inverse ? ci.lower > 0 : ci.upper < 0);
    }));
    return h('div',
      res.srm && res.srm.mismatch ? h('div', { class: 'notice notice-danger', role: 'alert', 'data-srm': '' },
        h('strong', 'Sample ratio mismatch. '), `The units per variation do not match the weights (p = ${Number(res.srm.p_value).toPrecision(3)}): the assignment or the tracking is broken, so these results cannot be trusted.`) : null,
      failing.length ? h('div', { class: 'notice notice-danger', role: 'alert' }, h('strong', 'Guardrail at risk: '), failing.map((m) => m.name).join(', ')) : null,
      (res.warnings || []).length ? h('ul', { class: 'notice' }, res.warnings.map((w) => h('li', typeof w === 'string' ? w : w.message || JSON.stringify(w)))) : null,
      res.complete === false ? h('p', { class: 'notice' }, 'Events are still being loaded: the numbers may grow.') : null,
      h('section', { class: 'card', 'aria-labelledby': 'exposure-title' },
        h('h2', { id: 'exposure-title' }, 'Exposure'),
        table({
          caption: 'Units exposed per variation',
          rows: (res.units || []).map((u, i) => ({ u, i })),
          columns: [
            { label: 'Variation', render: (r) => variations[r.i] || `arm ${r.i}` },
            { label: 'Units', class: 'num', render: (r) => h('span', { 'data-units': String(r.u) }, num(r.u)) },
            { label: 'Weight', class: 'num', render: (r) => (res.phase && res.phase.weights ? pct(res.phase.weights[r.i], 0) : '—') },
            { label: 'Exposed to several', class: 'num', render: (r) => num((res.multiple_exposures || [])[r.i] || 0) },
          ],
        }),
        h('p', { class: 'muted small' }, `Engine: ${res.engine}. SRM check p = ${res.srm ? Number(res.srm.p_value).toPrecision(3) : '—'}.`)),
      h('h2', 'Metrics'),
      metrics.length ? metrics.map((m) => metricTable(m, variations, res.engine)) : emptyState('No metrics', 'Add primary metrics to the experiment.'),
      canDecide && !x.decision && x.status !== 'draft' ? decisionForm(x, variations) : null);
  });
  return h('div',
    h('p', { class: 'breadcrumb' }, h('a', { href: app.path('/experiments') }, 'Experiments')),
    pageHeader(x.name, {
      subtitle: x.hypothesis || `On ${x.feature} · ${x.rule_id} in ${x.environment}`,
      actions: canDecide && !x.decision ? lifecycleButton(x) : null,
    }),
    h('dl', { class: 'facts card' },
      h('dt', 'Status'), h('dd', badge(x.status, STATUS_KIND[x.status] || 'neutral')),
      h('dt', 'Flag'), h('dd', h('a', { href: app.path(`/flags/${encodeURIComponent(x.feature)}`), class: 'mono' }, x.feature), ` · rule ${x.rule_id} · ${x.environment}`),
      x.decision ? [h('dt', 'Decision'), h('dd', { 'data-decision': x.decision.action }, `${x.decision.action}${x.decision.variation !== undefined && x.decision.variation !== null ? ` variation ${x.decision.variation}` : ''}${x.decision.reason ? ` — ${x.decision.reason}` : ''}`)] : null),
    results);
}


