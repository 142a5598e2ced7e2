// The insight builder's model: a draft per kind, the request body sent to `POST …/insights/{kind}`, and the
// draft kept in the address (`?q=`) so an insight can be shared and reopened from a dashboard.

export const KINDS = [
  ['trends', 'Trends'],
  ['funnel', 'Funnel'],
  ['retention', 'Retention'],
  ['stickiness', 'Stickiness'],
  ['lifecycle', 'Lifecycle'],
];

export const MATHS = [
  ['total', 'Total events'], ['dau', 'Unique persons'], ['weekly_active', 'Weekly active'], ['monthly_active', 'Monthly active'],
  ['per_user', 'Events per person (mean)'], ['sum', 'Sum of property'], ['avg', 'Average of property'],
  ['min', 'Minimum of property'], ['max', 'Maximum of property'], ['median', 'Median of property'],
  ['p90', '90th percentile of property'], ['p95', '95th percentile'], ['p99', '99th percentile'],
];
export const PROPERTY_MATHS = new Set(['sum', 'avg', 'min', 'max', 'median', 'p90', 'p95', 'p99']);

export const OPERATORS = [
  ['exact', 'equals'], ['is_not', 'does not equal'], ['contains', 'contains'], ['not_contains', 'does not contain'],
  ['regex', 'matches regex'], ['not_regex', 'does not match regex'], ['gt', '>'], ['gte', '≥'], ['lt', '<'], ['lte', '≤'],
  ['is_set', 'is set'], ['is_not_set', 'is not set'],
];

export const RANGES = [
  ['-24h', 'Last 24 hours'], ['-7d', 'Last 7 days'], ['-14d', 'Last 14 days'], ['-30d', 'Last 30 days'],
  ['-90d', 'Last 90 days'], ['-180d', 'Last 180 days'], ['custom', 'Custom dates'],
];

export function defaultDraft(kind = 'trends') {
  return {
    kind,
    series: [{ event: '$pageview', math: 'total', math_property: '' }],
    steps: [{ event: '$pageview' }, { event: '' }],
    start_event: '$pageview',
    return_event: '$pageview',
    event: '$pageview',
    period: 'week',
    periods: 8,
    retention_cohort: 'first_time',
    range: '-7d',
    date_from: '',
    date_to: '',
    interval: 'day',
    chart: 'line',
    window_value: '',
    window_unit: 'day',
    order: 'ordered',
    breakdown_type: '',
    breakdown_property: '',
    filters: [],
  };
}

function filterBody(f) {
  const out = { key: f.key.trim(), operator: f.operator, type: f.type };
  if (f.operator !== 'is_set' && f.operator !== 'is_not_set') {
    const raw = String(f.value ?? '');
    const num = Number(raw);
    out.value = ['gt', 'gte', 'lt', 'lte'].includes(f.operator) && raw.trim() !== '' && !Number.isNaN(num) ? num : raw;
  }
  return out;
}

/** The API body for a draft; fields that do not apply to its kind are left out. */
export function body(d) {
  const b = {};
  if (d.kind === 'retention') {
    if (d.range === 'custom' && d.date_to) b.date_to = d.date_to;
  } else if (d.range === 'custom') {
    if (d.date_from) b.date_from = d.date_from;
    if (d.date_to) b.date_to = d.date_to;
  } else {
    b.date_from = d.range;
  }
  if (d.kind === 'trends' || d.kind === 'stickiness' || d.kind === 'lifecycle' || d.kind === 'funnel') b.interval = d.interval;
  if (d.filters.length) b.properties = d.filters.map(filterBody);
  const breakdown = d.breakdown_type && d.breakdown_property.trim()
    ? { type: d.breakdown_type, property: d.breakdown_property.trim() } : null;
  switch (d.kind) {
    case 'trends':
      b.series = d.series.map((sr) => {
        const one = { event: sr.event.trim() || '$all', math: sr.math };
        if (PROPERTY_MATHS.has(sr.math)) one.math_property = sr.math_property.trim();
        return one;
      });
      if (breakdown) b.breakdown = breakdown;
      break;
    case 'funnel':
      b.steps = d.steps.map((st) => ({ event: st.event.trim() }));
      if (d.order !== 'ordered') b.order = d.order;
      if (String(d.window_value).trim() !== '') b.conversion_window = { value: Number(d.window_value), unit: d.window_unit };
      if (breakdown) b.breakdown = breakdown;
      break;
    case 'retention':
      b.start_event = { event: d.start_event.trim() };
      b.return_event = { event: d.return_event.trim() };
      b.period = d.period;
      b.periods = Number(d.periods);
      b.cohort = d.retention_cohort;
      if (breakdown) b.breakdown = breakdown;
      break;
    default:
      b.event = { event: d.event.trim() };
  }
  return b;
}

/** A draft from an API body (a saved insight's query), the inverse of `body` for what the builder can show. */
export function fromBody(kind, b, chart) {
  const d = defaultDraft(kind);
  const ev = (x) => (x && typeof x === 'object' ? String(x.event ?? '') : String(x ?? ''));
  if (typeof b.date_from === 'string' && RANGES.some(([v]) => v === b.date_from)) {
    d.range = b.date_from;
  } else if (b.date_from || b.date_to) {
    d.range = 'custom';
    d.date_from = String(b.date_from || '').slice(0, 10);
    d.date_to = String(b.date_to || '').slice(0, 10);
  }
  if (b.interval) d.interval = b.interval;
  if (chart) d.chart = chart;
  d.filters = (b.properties || []).filter((f) => f && f.key).map((f) => ({
    key: f.key, type: f.type || 'event', operator: f.operator || 'exact', value: Array.isArray(f.value) ? f.value.join(',') : String(f.value ?? ''),
  }));
  if (b.breakdown && b.breakdown.property) {
    d.breakdown_type = b.breakdown.type || 'event';
    d.breakdown_property = b.breakdown.property;
  }
  if (kind === 'trends' && Array.isArray(b.series)) {
    d.series = b.series.map((x) => ({ event: ev(x.event), math: x.math || 'total', math_property: x.math_property || '' }));
  } else if (kind === 'funnel' && Array.isArray(b.steps)) {
    d.steps = b.steps.map((x) => ({ event: ev(x.event) }));
    if (b.order) d.order = b.order;
    if (b.conversion_window) {
      d.window_value = String(b.conversion_window.value);
      d.window_unit = b.conversion_window.unit;
    }
  } else if (kind === 'retention') {
    d.start_event = ev(b.start_event);
    d.return_event = ev(b.return_event);
    if (b.period) d.period = b.period;
    if (b.periods) d.periods = b.periods;
    if (b.cohort) d.retention_cohort = b.cohort;
    d.range = b.date_to ? 'custom' : '-7d';
  } else if (b.event) {
    d.event = ev(b.event);
  }
  return d;
}

/** The draft in the address: `?q=` holds its JSON. */
export function fromQuery(query) {
  const raw = query.get('q');
  const kind = query.get('kind');
  let d = defaultDraft(KINDS.some(([k]) => k === kind) ? kind : 'trends');
  if (raw) {
    try {
      const parsed = JSON.parse(raw);
      if (parsed && typeof parsed === 'object') d = { ...d, ...parsed };
    } catch {
      // An edited or truncated address: start from the defaults.
    }
  }
  return d;
}

export function toQuery(d) {
  return `?kind=${encodeURIComponent(d.kind)}&q=${encodeURIComponent(JSON.stringify(d))}`;
}

export function breakdownText(v) {
  if (v === null || v === undefined || v === '') return '(none)';
  if (v === '$$_posthog_breakdown_other_$$') return '(other values)';
  return String(v);
}

/** Series of a trends answer, named with their breakdown value. */
export function trendsSeries(result) {
  return (result || []).map((r) => ({
    label: 'breakdown_value' in r ? `${r.label} · ${breakdownText(r.breakdown_value)}` : r.label,
    data: r.data || [],
    total: r.count,
  }));
}

export const LIFECYCLE = ['new', 'returning', 'resurrecting', 'dormant'];
