// Charts drawn as SVG (no library): line and bar charts of series over buckets with a legend, funnel step bars,
// the retention heat-map table and the lifecycle's stacked bars. Colours come from CSS classes (`c0`…`c7`), never
// from style attributes (the CSP forbids them). Every chart has a text alternative: a data table next to it, which
// is also what people copy numbers from.
import { h, s } from '../dom.js';
import { table } from '../ui.js';

const W = 760;
const H = 260;
const PAD = { left: 52, right: 36, top: 12, bottom: 34 };
export const PALETTE = 8;

/** A number as people read it: integers grouped, fractions to 2 places. */
export function num(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  const n = Number(v);
  if (Number.isInteger(n)) return n.toLocaleString('en');
  // Small fractions (a K-factor of 0.004) keep two significant digits rather than rounding to 0.
  if (Math.abs(n) < 0.01) return String(Number(n.toPrecision(2)));
  return n.toLocaleString('en', { maximumFractionDigits: 2 });
}

export function pct(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  return `${(Number(v) * 100).toFixed(digits)}%`;
}

/** Seconds as "3 h 12 min". */
export function duration(secs) {
  if (secs === null || secs === undefined) return '—';
  const s0 = Math.round(secs);
  if (s0 < 60) return `${s0} s`;
  const m = Math.round(s0 / 60);
  if (m < 60) return `${m} min`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h ${m % 60} min`;
  return `${(s0 / 86400).toFixed(1)} days`;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function axes(labels, ticks, x, y) {
  const lines = ticks.map((v) => s('g', { class: 'tick' },
    s('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: v === 0 ? 'axis' : 'grid' }),
    s('text', { x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, num(Number(v.toPrecision(3))))));
  const every = Math.max(1, Math.ceil(labels.length / 8));
  const xl = labels.map((l, i) => (i % every === 0
    ? s('text', { x: x(i), y: H - PAD.bottom + 18, 'text-anchor': 'middle' }, String(l)) : null));
  return s('g', { class: 'axes', 'aria-hidden': 'true' }, lines, xl);
}

/** Ticks at a round step covering [lo, hi], zero among them. */
function scale(lo, hi) {
  const step = niceMax(Math.max(hi - lo, Number.EPSILON) / 4);
  const from = Math.floor(lo / step) * step;
  const to = Math.max(Math.ceil(hi / step) * step, from + step);
  const ticks = [];
  for (let v = from; v <= to + step / 2; v += step) ticks.push(Math.abs(v) < step / 1e6 ? 0 : v);
  return { lo: from, hi: to, ticks };
}

/**
 * Series over buckets: `series` = [{label, data}], `labels` = bucket names; `type` 'line' or 'bar' (grouped; stacked
 * when `stacked`, which allows negative values, e.g. the lifecycle's dormant).
 */
export function seriesChart({ title, labels, series, type = 'line', stacked = false }) {
  const n = labels.length;
  let lo = 0;
  let hi = 0;
  if (stacked) {
    for (let i = 0; i < n; i += 1) {
      let pos = 0;
      let neg = 0;
      for (const sr of series) {
        const v = sr.data[i] || 0;
        if (v >= 0) pos += v; else neg += v;
      }
      hi = Math.max(hi, pos);
      lo = Math.min(lo, neg);
    }
  } else {
    for (const sr of series) for (const v of sr.data) { hi = Math.max(hi, v || 0); lo = Math.min(lo, v || 0); }
  }
  if (hi <= 0 && lo >= 0) hi = 1;
  const sc = scale(lo, hi);
  lo = sc.lo;
  hi = sc.hi;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slot = plotW / Math.max(n, 1);
  const x = (i) => (type === 'line' && n > 1 ? PAD.left + (plotW * i) / (n - 1) : PAD.left + slot * (i + 0.5));
  const y = (v) => PAD.top + plotH - ((v - lo) / (hi - lo || 1)) * plotH;
  const marks = [];
  if (type === 'line') {
    series.forEach((sr, k) => {
      const pts = sr.data.map((v, i) => `${x(i).toFixed(1)},${y(v || 0).toFixed(1)}`).join(' ');
      marks.push(s('g', { class: `series c${k % PALETTE}` },
        s('polyline', { points: pts, class: 'line' }),
        n <= 60 ? sr.data.map((v, i) => s('circle', { cx: x(i), cy: y(v || 0), r: 2.5, class: 'point' },
          s('title', `${sr.label} · ${labels[i]}: ${num(v)}`))) : null));
    });
  } else {
    const groupW = slot * 0.8;
    for (let i = 0; i < n; i += 1) {
      let pos = 0;
      let neg = 0;
      series.forEach((sr, k) => {
        const v = sr.data[i] || 0;
        let top;
        let bottom;
        let bx;
        let bw;
        if (stacked) {
          bw = groupW;
          bx = x(i) - groupW / 2;
          if (v >= 0) { bottom = pos; pos += v; top = pos; } else { top = neg; neg += v; bottom = neg; }
        } else {
          bw = groupW / series.length;
          bx = x(i) - groupW / 2 + k * bw;
          top = Math.max(v, 0);
          bottom = Math.min(v, 0);
        }
        marks.push(s('rect', {
          x: bx.toFixed(1), y: y(top).toFixed(1), width: Math.max(bw - 1, 1).toFixed(1),
          height: Math.max(y(bottom) - y(top), 0).toFixed(1), class: `bar c${k % PALETTE}`,
        }, s('title', `${sr.label} · ${labels[i]}: ${num(v)}`)));
      });
    }
  }
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': `${title}: chart of ${series.length} series over ${n} periods (the table below has the numbers)` },
      axes(labels, sc.ticks, x, y), marks),
    legend(series));
}

export function legend(series) {
  return h('ul', { class: 'legend', 'aria-label': 'Legend' }, series.map((sr, k) => h('li',
    h('span', { class: `swatch c${k % PALETTE}`, 'aria-hidden': 'true' }), sr.label)));
}

/** The numbers of a series chart: one row per series, one column per bucket, and the total. */
export function seriesTable({ caption, labels, series, total = true }) {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact data-table', 'data-chart-table': '' },
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', h('tr', h('th', { scope: 'col' }, 'Series'), total ? h('th', { scope: 'col' }, 'Total') : null,
      labels.map((l) => h('th', { scope: 'col' }, String(l))))),
    h('tbody', series.map((sr, k) => h('tr', { 'data-series': sr.label },
      h('th', { scope: 'row' }, h('span', { class: `swatch c${k % PALETTE}`, 'aria-hidden': 'true' }), sr.label),
      total ? h('td', { class: 'num', 'data-total': '' }, num(sr.total)) : null,
      sr.data.map((v) => h('td', { class: 'num' }, num(v))))))));
}

/** Funnel steps as horizontal bars: count, conversion from the first step, drop-off and time to convert. */
export function funnelBars(result) {
  const steps = result.steps || [];
  const first = steps.length ? steps[0].count || 0 : 0;
  return h('div', { class: 'funnel' },
    h('ol', { class: 'funnel-steps' }, steps.map((st, i) => {
      const share = first ? st.count / first : 0;
      return h('li', { class: 'funnel-step', 'data-step': String(i + 1) },
        h('div', { class: 'funnel-head' },
          h('span', { class: 'funnel-name' }, `${i + 1}. ${st.name || st.event}`),
          h('span', { class: 'funnel-count', 'data-count': String(st.count) }, `${num(st.count)} · ${pct(st.conversion_from_first)}`)),
        s('svg', { viewBox: '0 0 100 8', preserveAspectRatio: 'none', class: 'funnel-bar', 'aria-hidden': 'true' },
          s('rect', { x: 0, y: 0, width: 100, height: 8, class: 'funnel-track' }),
          s('rect', { x: 0, y: 0, width: (share * 100).toFixed(2), height: 8, class: 'funnel-fill' })),
        i > 0 ? h('p', { class: 'muted small' },
          `${pct(st.conversion_from_previous)} from the step before; ${num(st.dropped_from_previous)} dropped off`,
          st.median_conversion_time_s !== null && st.median_conversion_time_s !== undefined
            ? `; median time to convert ${duration(st.median_conversion_time_s)} (mean ${duration(st.average_conversion_time_s)})` : '') : null);
    })));
}

/** The retention cohorts as a heat-map table: cohort, size, then the share returning in each period. */
export function retentionTable(cohorts, period = 'period') {
  const periods = cohorts.reduce((m, c) => Math.max(m, (c.values || []).length), 0);
  return h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact retention', 'data-chart-table': '' },
    h('caption', { class: 'visually-hidden' }, 'Retention by cohort'),
    h('thead', h('tr', h('th', { scope: 'col' }, 'Cohort'), h('th', { scope: 'col' }, 'Persons'),
      Array.from({ length: periods }, (_, i) => h('th', { scope: 'col' }, `${period[0].toUpperCase()}${period.slice(1)} ${i}`)))),
    h('tbody', cohorts.map((c) => h('tr', { 'data-cohort': c.label },
      h('th', { scope: 'row' }, c.label),
      h('td', { class: 'num' }, num(c.size)),
      (c.values || []).map((v, i) => {
        const p = (c.percentages || [])[i] || 0;
        const heat = Math.min(9, Math.round(p * 9));
        return h('td', { class: `num heat heat-${heat}`, title: `${num(v)} of ${num(c.size)}`, 'data-value': String(v) }, pct(p));
      }))))));
}
