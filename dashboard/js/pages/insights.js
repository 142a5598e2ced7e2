// Insights: one builder for the five kinds (trends, funnel, retention, stickiness, lifecycle) with a date range,
// interval, property filters and a breakdown; the answer as a chart and a table of its numbers; "save to a
// dashboard" for members who may write insights. The draft lives in the address, so an insight can be shared.
import { get, patch, post, projectPath, query as qs } from '../api.js';
import { h, mount } from '../dom.js';
import { navigate } from '../router.js';
import { app } from '../shell.js';
import {
  button, emptyState, errorPanel, field, formSummary, input, loading, pageHeader, select, showErrors, submitting, toast,
} from '../ui.js';
import {
  funnelBars, num, pct, retentionTable, seriesChart, seriesTable,
} from '../insights/charts.js';
import {
  body, breakdownText, defaultDraft, fromQuery, KINDS, LIFECYCLE, MATHS, OPERATORS, PROPERTY_MATHS, RANGES, toQuery, trendsSeries,
} from '../insights/query.js';

export const insightsPath = (draft) => app.path(`/insights${draft ? toQuery(draft) : ''}`);

/** Event names seen in the newest events, for the event fields' suggestions. */
async function eventNames() {
  try {
    const r = await get(projectPath(app.project.id, `/events${qs({ limit: 1000 })}`));
    return [...new Set((r.results || []).map((e) => e.event))].sort();
  } catch {
    return [];
  }
}

function eventInput(value, onchange, props = {}) {
  return input({ value, list: 'event-names', autocomplete: 'off', spellcheck: 'false', oninput: (e) => onchange(e.target.value), ...props });
}

/** The answer of one insight, drawn for its kind. Used by the builder and by dashboard tiles. */
export function renderAnswer(kind, answer, draft = {}) {
  const res = answer.result;
  const meta = h('p', { class: 'muted small answer-meta' },
    `${answer.date_from ? answer.date_from.slice(0, 10) : ''} → ${answer.date_to ? answer.date_to.slice(0, 10) : ''}`,
    answer.interval ? ` · by ${answer.interval}` : '',
    answer.query_ms !== undefined ? ` · ${num(Math.round(answer.query_ms))} ms${answer.cached ? ' (cached)' : ''}` : '',
    answer.complete === false ? ' · still loading events: numbers may grow' : '');
  if (kind === 'trends') {
    const series = trendsSeries(res);
    if (!series.length) return h('div', meta, emptyState('No events match', 'Change the events, the filters or the date range.'));
    const labels = res[0].labels || [];
    return h('div', meta,
      seriesChart({ title: 'Trends', labels, series, type: draft.chart === 'bar' ? 'bar' : 'line' }),
      seriesTable({ caption: 'Trends: values per period', labels, series }));
  }
  if (kind === 'stickiness') {
    const series = [{ label: res.label || 'persons', data: res.data || [], total: (res.data || []).reduce((a, b) => a + b, 0) }];
    return h('div', meta,
      h('p', { class: 'muted small' }, 'Persons by the number of periods they did the event in.'),
      seriesChart({ title: 'Stickiness', labels: res.labels || [], series, type: 'bar' }),
      seriesTable({ caption: 'Stickiness: persons by active periods', labels: res.labels || [], series }));
  }
  if (kind === 'lifecycle') {
    const series = LIFECYCLE.map((k) => ({ label: k, data: res[k] || [], total: (res[k] || []).reduce((a, b) => a + b, 0) }));
    return h('div', meta,
      seriesChart({ title: 'Lifecycle', labels: res.labels || [], series, type: 'bar', stacked: true }),
      seriesTable({ caption: 'Lifecycle: persons per state and period', labels: res.labels || [], series }));
  }
  if (kind === 'funnel') {
    const items = Array.isArray(res) ? res : [res];
    if (!items.length) return h('div', meta, emptyState('Nobody entered the funnel', 'Change the steps or the date range.'));
    return h('div', meta, items.map((item) => h('section', { class: 'funnel-group' },
      'breakdown_value' in item ? h('h3', breakdownText(item.breakdown_value)) : null,
      h('p', { class: 'funnel-summary' },
        h('strong', { 'data-conversion': '' }, pct(item.conversion_rate)), ' converted: ',
        h('span', { 'data-converted': '' }, num(item.converted)), ' of ', h('span', { 'data-entered': '' }, num(item.entered)), ' who entered.'),
      funnelBars(item))));
  }
  if (kind === 'retention') {
    const groups = Array.isArray(res) && res.length && res[0].cohorts ? res : [{ cohorts: res || [] }];
    if (!groups.some((g) => g.cohorts.length)) return h('div', meta, emptyState('No cohorts', 'Nobody did the start event in these periods.'));
    return h('div', meta, groups.map((g) => h('section',
      'breakdown_value' in g ? h('h3', breakdownText(g.breakdown_value)) : null,
      retentionTable(g.cohorts, answer.interval || draft.period || 'period'))));
  }
  return h('pre', { class: 'code' }, JSON.stringify(res, null, 2));
}

/** Runs a saved or drafted insight and draws it: the tile body of dashboards. */
export async function runInsight(kind, requestBody) {
  return post(projectPath(app.project.id, `/insights/${encodeURIComponent(kind)}`), requestBody);
}

function filtersEditor(d, onchange) {
  const box = h('div', { class: 'filters-editor' });
  const draw = () => {
    mount(box, d.filters.length ? h('ul', { class: 'plain-list' }, d.filters.map((f, i) => {
      const at = `properties[${i}]`;
      const valueless = f.operator === 'is_set' || f.operator === 'is_not_set';
      return h('li', { class: 'filter-row' },
        field({ label: `Filter ${i + 1} property`, name: `${at}.key`, control: input({ value: f.key, autocomplete: 'off', spellcheck: 'false', oninput: (e) => { f.key = e.target.value; onchange(); } }) }),
        field({ label: 'Of', name: `${at}.type`, control: select([['event', 'the event'], ['person', 'the person']], f.type, { onchange: (e) => { f.type = e.target.value; onchange(); } }) }),
        field({ label: 'Operator', name: `${at}.operator`, control: select(OPERATORS, f.operator, { onchange: (e) => { f.operator = e.target.value; onchange(); draw(); } }) }),
        field({ label: 'Value', name: `${at}.value`, control: input({ value: f.value, disabled: valueless, oninput: (e) => { f.value = e.target.value; onchange(); } }) }),
        button('Remove', { kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove filter ${i + 1}`, onclick: () => { d.filters.splice(i, 1); onchange(); draw(); } }));
    })) : h('p', { class: 'muted small' }, 'No property filters: every event counts.'),
    button('Add a filter', { kind: 'secondary', class: 'btn btn-secondary btn-small', onclick: () => { d.filters.push({ key: '', type: 'event', operator: 'exact', value: '' }); onchange(); draw(); } }));
  };
  draw();
  return box;
}

function kindFields(d, onchange) {
  const box = h('div');
  const draw = () => {
    const parts = [];
    if (d.kind === 'trends') {
      parts.push(h('fieldset', h('legend', 'Series'),
        h('ol', { class: 'plain-list' }, d.series.map((sr, i) => {
          const letter = String.fromCharCode(65 + i);
          return h('li', { class: 'series-row' },
            field({ label: `Series ${letter} event`, name: `series[${i}].event`, control: eventInput(sr.event, (v) => { sr.event = v; onchange(); }) }),
            field({ label: 'Measure', name: `series[${i}].math`, control: select(MATHS, sr.math, { onchange: (e) => { sr.math = e.target.value; onchange(); draw(); } }) }),
            PROPERTY_MATHS.has(sr.math) ? field({ label: 'Numeric property', name: `series[${i}].math_property`, control: input({ value: sr.math_property, oninput: (e) => { sr.math_property = e.target.value; onchange(); } }) }) : null,
            d.series.length > 1 ? button('Remove', { kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove series ${letter}`, onclick: () => { d.series.splice(i, 1); onchange(); draw(); } }) : null);
        })),
        d.series.length < 26 ? button('Add a series', { class: 'btn btn-secondary btn-small', onclick: () => { d.series.push({ event: '$pageview', math: 'total', math_property: '' }); onchange(); draw(); } }) : null));
    } else if (d.kind === 'funnel') {
      parts.push(h('fieldset', h('legend', 'Steps'),
        h('ol', { class: 'plain-list' }, d.steps.map((st, i) => h('li', { class: 'series-row' },
          field({ label: `Step ${i + 1} event`, name: `steps[${i}].event`, control: eventInput(st.event, (v) => { st.event = v; onchange(); }) }),
          d.steps.length > 2 ? button('Remove', { kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove step ${i + 1}`, onclick: () => { d.steps.splice(i, 1); onchange(); draw(); } }) : null))),
        d.steps.length < 20 ? button('Add a step', { class: 'btn btn-secondary btn-small', onclick: () => { d.steps.push({ event: '' }); onchange(); draw(); } }) : null),
      h('div', { class: 'grid-3' },
        field({ label: 'Order', name: 'order', control: select([['ordered', 'In order'], ['strict', 'Strictly in order'], ['unordered', 'Any order']], d.order, { onchange: (e) => { d.order = e.target.value; onchange(); } }) }),
        field({ label: 'Conversion window', name: 'conversion_window', hint: 'Empty: the default (14 days).', control: input({ type: 'number', min: 1, value: d.window_value, oninput: (e) => { d.window_value = e.target.value; onchange(); } }) }),
        field({ label: 'Window unit', name: 'conversion_window.unit', control: select(['minute', 'hour', 'day', 'week', 'month'], d.window_unit, { onchange: (e) => { d.window_unit = e.target.value; onchange(); } }) })));
    } else if (d.kind === 'retention') {
      parts.push(h('div', { class: 'grid-2' },
        field({ label: 'Start event', name: 'start_event', hint: 'Puts a person in the cohort of its period.', control: eventInput(d.start_event, (v) => { d.start_event = v; onchange(); }) }),
        field({ label: 'Return event', name: 'return_event', control: eventInput(d.return_event, (v) => { d.return_event = v; onchange(); }) })),
      h('div', { class: 'grid-3' },
        field({ label: 'Period', name: 'period', control: select(['day', 'week', 'month'], d.period, { onchange: (e) => { d.period = e.target.value; onchange(); } }) }),
        field({ label: 'Periods', name: 'periods', control: input({ type: 'number', min: 1, max: 100, value: d.periods, oninput: (e) => { d.periods = e.target.value; onchange(); } }) }),
        field({ label: 'Cohorts', name: 'cohort', control: select([['first_time', 'First time they did it'], ['recurring', 'Every time they did it']], d.retention_cohort, { onchange: (e) => { d.retention_cohort = e.target.value; onchange(); } }) })));
    } else {
      parts.push(field({ label: 'Event', name: 'event', control: eventInput(d.event, (v) => { d.event = v; onchange(); }) }));
    }
    mount(box, parts);
  };
  draw();
  return box;
}

function rangeFields(d, onchange) {
  const box = h('div', { class: 'grid-3 range-fields' });
  const draw = () => {
    const retention = d.kind === 'retention';
    const ranges = retention ? [['-7d', 'Up to today'], ['custom', 'Up to a date']] : RANGES;
    if (!ranges.some(([v]) => v === d.range)) d.range = ranges[0][0];
    mount(box,
      field({ label: retention ? 'Cohorts up to' : 'Date range', name: 'date_range', control: select(ranges, d.range, { onchange: (e) => { d.range = e.target.value; onchange(); draw(); } }) }),
      d.range === 'custom' && !retention ? field({ label: 'From', name: 'date_from', control: input({ type: 'date', value: d.date_from, oninput: (e) => { d.date_from = e.target.value; onchange(); } }) }) : null,
      d.range === 'custom' ? field({ label: retention ? 'Last day' : 'To', name: 'date_to', control: input({ type: 'date', value: d.date_to, oninput: (e) => { d.date_to = e.target.value; onchange(); } }) }) : null,
      !retention ? field({ label: 'Interval', name: 'interval', control: select(['hour', 'day', 'week', 'month'], d.interval, { onchange: (e) => { d.interval = e.target.value; onchange(); } }) }) : null);
  };
  draw();
  return box;
}

function breakdownFields(d, onchange) {
  if (d.kind === 'stickiness' || d.kind === 'lifecycle') return null;
  return h('div', { class: 'grid-3' },
    field({ label: 'Break down by', name: 'breakdown.type', control: select([['', 'Nothing'], ['event', 'An event property'], ['person', 'A person property']], d.breakdown_type, { onchange: (e) => { d.breakdown_type = e.target.value; onchange(); } }) }),
    field({ label: 'Breakdown property', name: 'breakdown.property', hint: 'e.g. $browser, plan', control: input({ value: d.breakdown_property, autocomplete: 'off', spellcheck: 'false', oninput: (e) => { d.breakdown_property = e.target.value; onchange(); } }) }),
    d.kind === 'trends' ? field({ label: 'Chart type', name: 'chart', control: select([['line', 'Line'], ['bar', 'Bars']], d.chart, { onchange: (e) => { d.chart = e.target.value; onchange(); } }) }) : null);
}

/** The "save to a dashboard" form: a new dashboard or one of the project's, and the insight's name. */
function saveForm(d, requestBody, onDone) {
  const name = input({ required: true, autocomplete: 'off' });
  const target = h('div', loading('Loading dashboards…'));
  let dashboards = [];
  let choice = null;
  let newName = null;
  const form = h('form', {
    class: 'form card save-form', novalidate: true, 'aria-labelledby': 'save-insight-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const tile = { name: name.value.trim(), kind: d.kind, query: requestBody(), chart: d.chart };
      if (!tile.name) {
        showErrors(form, { status: 400, errors: [{ field: 'insights[].name', message: 'Give the insight a name.' }] });
        return;
      }
      if (!choice) {
        showErrors(form, { status: 0, message: 'The dashboards could not be loaded: reload the page and try again.', errors: [] });
        return;
      }
      const saved = await submitting(form, async () => {
        if (choice.value === '') {
          const title = newName.value.trim();
          const key = title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60) || `dashboard-${Date.now()}`;
          return post(projectPath(app.project.id, '/dashboards'), { key, name: title, insights: [tile] });
        }
        const current = dashboards.find((x) => x.key === choice.value);
        return patch(projectPath(app.project.id, `/dashboards/${encodeURIComponent(current.key)}`),
          { insights: [...(current.insights || []), tile], version: current.version });
      });
      if (saved) {
        toast(`Saved to “${saved.name}”.`);
        onDone(saved);
      }
    },
  },
  h('h2', { id: 'save-insight-title' }, 'Save to a dashboard'),
  formSummary(),
  field({ label: 'Insight name', name: 'insights[].name', control: name }),
  target,
  h('div', { class: 'actions actions-left' }, button('Save insight', { type: 'submit', kind: 'primary' })));
  get(projectPath(app.project.id, '/dashboards')).then((r) => {
    dashboards = r.results || [];
    newName = input({ autocomplete: 'off', value: 'My dashboard' });
    const newField = field({ label: 'New dashboard name', name: 'name', control: newName });
    choice = select([['', 'A new dashboard'], ...dashboards.map((x) => [x.key, x.name])], '', {
      onchange: () => { newField.hidden = choice.value !== ''; },
    });
    mount(target, field({ label: 'Dashboard', name: 'key', control: choice }), newField);
  }).catch((err) => mount(target, errorPanel(err)));
  return form;
}

export async function insightsPage({ query }) {
  const names = await eventNames();
  const d = fromQuery(query);
  const canSave = app.can('insights:write');
  const answerBox = h('div', { class: 'answer', 'aria-live': 'polite' });
  const saveBox = h('div');
  const status = h('p', { class: 'visually-hidden', role: 'status' });
  let lastBody = null;

  // Opened from a dashboard tile (`dashboard` and `tile` in the address): the answer can update that tile in place.
  const editing = canSave && query.get('dashboard') && /^\d+$/.test(query.get('tile') || '')
    ? { key: query.get('dashboard'), index: Number(query.get('tile')) } : null;
  const editSuffix = editing ? `&dashboard=${encodeURIComponent(editing.key)}&tile=${editing.index}` : '';
  const sync = () => history.replaceState(null, '', `${location.pathname}${toQuery(d)}${editSuffix}`);
  let editBanner = null;
  if (editing) {
    editing.dash = await get(projectPath(app.project.id, `/dashboards/${encodeURIComponent(editing.key)}`)).catch(() => null);
    editing.tile = editing.dash && (editing.dash.insights || [])[editing.index];
    editBanner = editing.tile
      ? h('p', { class: 'notice', 'data-editing': '' }, 'Editing “', h('strong', editing.tile.name), '” of the dashboard ',
        h('a', { href: app.path(`/dashboards/${encodeURIComponent(editing.key)}`) }, editing.dash.name),
        ': run the insight, then “Update on the dashboard”.')
      : h('p', { class: 'notice' }, 'The dashboard tile this insight came from no longer exists: save it as a new one.');
  }
  const updateTile = async (btn) => {
    const answerHead = btn.closest('.answer-head');
    const box = h('form', { class: 'form', novalidate: true, onsubmit: (e) => e.preventDefault() }, formSummary());
    answerHead.after(box);
    const done = await submitting(box, () => {
      const insights = [...(editing.dash.insights || [])];
      insights[editing.index] = { ...editing.tile, kind: d.kind, query: lastBody, chart: d.chart };
      return patch(projectPath(app.project.id, `/dashboards/${encodeURIComponent(editing.key)}`), { insights, version: editing.dash.version });
    }, 'Updating…');
    if (done) {
      toast(`“${editing.tile.name}” updated on “${done.name}”.`);
      navigate(app.path(`/dashboards/${encodeURIComponent(editing.key)}`));
    }
  };

  const form = h('form', { class: 'form card insight-form', novalidate: true, 'aria-label': 'Insight definition' });
  const run = async () => {
    const b = body(d);
    lastBody = b;
    sync();
    mount(saveBox);
    answerBox.setAttribute('aria-busy', 'true');
    mount(answerBox, loading('Running the insight…'));
    const answer = await submitting(form, () => runInsight(d.kind, b), 'Running…');
    answerBox.setAttribute('aria-busy', 'false');
    if (!answer) {
      mount(answerBox, emptyState('No answer', 'Correct the definition above and run it again.'));
      status.textContent = 'The insight could not run.';
      return;
    }
    mount(answerBox, h('section', { class: 'card', 'aria-labelledby': 'answer-title', 'data-kind': d.kind },
      h('div', { class: 'answer-head' }, h('h2', { id: 'answer-title' }, 'Result'),
        h('div', { class: 'actions' },
          editing && editing.tile ? button('Update on the dashboard', { kind: 'primary', onclick: (e) => updateTile(e.currentTarget) }) : null,
          canSave ? button(editing && editing.tile ? 'Save as a new insight' : 'Save to a dashboard', { onclick: () => { mount(saveBox, saveForm(d, () => lastBody, () => mount(saveBox))); saveBox.querySelector('input').focus(); } }) : null)),
      renderAnswer(d.kind, answer, d)));
    status.textContent = 'The insight has been updated.';
  };

  const drawForm = () => {
    mount(form,
      formSummary(),
      h('div', { class: 'segmented', role: 'group', 'aria-label': 'Insight kind' }, KINDS.map(([k, label]) => h('button', {
        type: 'button', class: 'segment', 'aria-pressed': String(d.kind === k),
        onclick: () => {
          if (d.kind === k) return;
          d.kind = k;
          if (k === 'stickiness' || k === 'lifecycle') d.breakdown_type = '';
          sync();
          drawForm();
          mount(answerBox, emptyState('Run the insight', 'Choose what to measure, then press “Run”.'));
        },
      }, label))),
      kindFields(d, sync),
      rangeFields(d, sync),
      d.kind !== 'lifecycle' && d.kind !== 'stickiness' ? null : h('p', { class: 'hint' }, `${d.kind === 'lifecycle' ? 'Lifecycle sorts persons into new, returning, resurrecting and dormant per period.' : 'Stickiness counts persons by how many periods of the range they did the event in.'}`),
      breakdownFields(d, sync),
      h('fieldset', h('legend', 'Property filters'), filtersEditor(d, sync)),
      h('div', { class: 'actions actions-left' }, button('Run', { type: 'submit', kind: 'primary' }),
        button('Reset', { onclick: () => { Object.assign(d, defaultDraft(d.kind)); sync(); drawForm(); } })));
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); run(); });
  drawForm();
  const page = h('div',
    pageHeader('Insights', { subtitle: 'Trends, funnels, retention, stickiness and lifecycle of your events.', actions: h('a', { href: app.path('/dashboards'), class: 'btn btn-secondary' }, 'Dashboards') }),
    h('datalist', { id: 'event-names' }, names.map((n) => h('option', { value: n }))),
    editBanner, status, form, answerBox, saveBox);
  // The first answer is part of the page's load.
  const first = run();
  const holder = h('div', { class: 'section-body' });
  holder.ready = first;
  page.append(holder);
  return page;
}
