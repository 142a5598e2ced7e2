// A flag's settings, prerequisites and per-environment rules as forms (for roles that may change features), or as
// plain text (for the others). Saving sends the whole document with the version it was based on: a change made by
// someone else meanwhile answers 409, shown with a way to reload.
import { get, projectPath, put } from '../api.js';
import { h, mount, s, uid } from '../dom.js';
import { app } from '../shell.js';
import {
  badge, button, clearErrors, confirmDialog, field, formSummary, input, select, showErrors, toast,
} from '../ui.js';
import { carryConditionState, conditionBuilder } from './conditions.js';
import { toggle, valueControl } from './controls.js';
import { clone, describeCondition, describeRule, newRule, percent, RULE_TYPES } from './model.js';

const DEFINITION = ['value_type', 'default_value', 'description', 'owner', 'tags', 'prerequisites', 'environments'];

export function definitionOf(doc) {
  const out = {};
  for (const k of DEFINITION) if (doc[k] !== undefined) out[k] = doc[k];
  return out;
}

/** Variation weights as a bar (SVG): each variation's share, labelled for assistive technology. */
export function weightsBar(weights, labels) {
  const total = weights.reduce((a, b) => a + b, 0) || 1;
  const colors = ['#3b5bdb', '#e8590c', '#2b8a3e', '#ae3ec9', '#1098ad', '#c92a2a'];
  let x = 0;
  const text = weights.map((w, i) => `${labels[i]} ${percent(w)}`).join(', ');
  return s('svg', { class: 'weights-bar', viewBox: '0 0 100 6', preserveAspectRatio: 'none', role: 'img', 'aria-label': `Weights: ${text}` },
    weights.map((w, i) => {
      const width = (w / total) * 100;
      const r = s('rect', { x: x.toFixed(3), y: '0', width: width.toFixed(3), height: '6', fill: colors[i % colors.length] });
      x += width;
      return r;
    }));
}

function ruleTitle(i, rule) {
  const label = (RULE_TYPES.find(([t]) => t === rule.type) || [null, rule.type])[1];
  return `Rule ${i + 1} · ${label}`;
}

/** Read-only view of a flag for roles that cannot change features. */
export function flagSummary(doc, envs) {
  return h('div', { class: 'stack' },
    h('section', { class: 'card', 'aria-labelledby': 'sum-settings' },
      h('h2', { id: 'sum-settings' }, 'Settings'),
      h('dl', { class: 'facts' },
        h('dt', 'Default value'), h('dd', h('code', JSON.stringify(doc.default_value))),
        h('dt', 'Owner'), h('dd', doc.owner || '—'),
        h('dt', 'Tags'), h('dd', (doc.tags || []).join(', ') || '—'),
        h('dt', 'Prerequisites'), h('dd', (doc.prerequisites || []).length
          ? (doc.prerequisites || []).map((p) => `${p.id} where ${describeCondition(p.condition)}`).join('; ') : 'none'))),
    envs.map((e) => {
      const settings = (doc.environments || {})[e.key] || { enabled: false, rules: [] };
      const id = uid('sum-env');
      return h('section', { class: 'card', 'aria-labelledby': id },
        h('h2', { id }, e.key, ' ', badge(settings.enabled ? 'on' : 'off', settings.enabled ? 'on' : 'off')),
        settings.rules && settings.rules.length
          ? h('ol', { class: 'rule-list' }, settings.rules.map((r) => h('li', describeRule(r), r.enabled === false ? ' (disabled)' : '',
            r.description ? h('span', { class: 'muted' }, ` — ${r.description}`) : null)))
          : h('p', { class: 'muted' }, settings.enabled ? `No rules: everyone gets ${JSON.stringify(doc.default_value)}.` : 'Off: not served here.'));
    }));
}

/**
 * The editor. `doc` is the feature as the API answered it, `envs` the project's environments, `otherKeys` the other
 * features (for prerequisites), `onSaved(doc)` is told of every successful save.
 */
export function flagEditor({ doc: initial, envs, otherKeys, onSaved }) {
  let doc = initial;
  let draft = clone(definitionOf(doc));
  const problems = new Map();
  let currentEnv = (envs.find((e) => (draft.environments || {})[e.key]?.enabled) || envs[0] || { key: 'production' }).key;
  const root = h('div');
  const status = h('span', { class: 'muted', role: 'status' });

  const changed = () => {
    const dirty = JSON.stringify(draft) !== JSON.stringify(definitionOf(doc));
    status.textContent = dirty ? 'Unsaved changes' : 'All changes saved';
    root.toggleAttribute('data-dirty', dirty);
  };
  const problem = (fieldName, message) => {
    if (message) problems.set(fieldName, message);
    else problems.delete(fieldName);
  };

  const settingsSection = () => {
    const description = input({ value: draft.description || '', oninput: (e) => { draft.description = e.target.value; changed(); } });
    const owner = input({ value: draft.owner || '', oninput: (e) => { draft.owner = e.target.value; changed(); } });
    const tags = input({
      value: (draft.tags || []).join(', '),
      oninput: (e) => { draft.tags = e.target.value.split(',').map((t) => t.trim()).filter(Boolean); changed(); },
    });
    const dv = valueControl(draft.value_type, draft.default_value, (v, p) => {
      problem('default_value', p);
      if (!p) draft.default_value = v;
      changed();
    });
    return h('section', { class: 'card', 'aria-labelledby': 'ed-settings' },
      h('h2', { id: 'ed-settings' }, 'Settings'),
      h('div', { class: 'grid-2' },
        field({ label: 'Default value', control: dv, name: 'default_value', hint: `A ${draft.value_type} value, served when no rule matches.` }),
        field({ label: 'Owner', control: owner, name: 'owner' })),
      field({ label: 'Description', control: description, name: 'description' }),
      field({ label: 'Tags', control: tags, name: 'tags', hint: 'Comma-separated.' }));
  };

  const prerequisitesSection = () => {
    draft.prerequisites = draft.prerequisites || [];
    const rows = draft.prerequisites.map((p, i) => {
      const known = JSON.stringify(p.condition ?? { value: true });
      const stateOptions = [['{"value":true}', 'is on (true)'], ['{"value":false}', 'is off (false)']];
      if (!stateOptions.some(([v]) => v === known)) stateOptions.push([known, `matches ${known}`]);
      return h('li', { class: 'prereq' },
        field({
          label: `Prerequisite ${i + 1}: flag`,
          name: `prerequisites[${i}].id`,
          control: select([['', 'Choose a flag'], ...otherKeys.filter((k) => k !== doc.key)], p.id, {
            onchange: (e) => { p.id = e.target.value; changed(); },
          }),
        }),
        field({
          label: 'Must',
          name: `prerequisites[${i}].condition`,
          control: select(stateOptions, known, { onchange: (e) => { p.condition = JSON.parse(e.target.value); changed(); } }),
        }),
        button('Remove', {
          kind: 'ghost', 'aria-label': `Remove prerequisite ${i + 1}`,
          onclick: () => { draft.prerequisites.splice(i, 1); changed(); rerender(); },
        }));
    });
    return h('section', { class: 'card', 'aria-labelledby': 'ed-prereq', 'data-field': 'prerequisites', tabindex: '-1' },
      h('h2', { id: 'ed-prereq' }, 'Prerequisites'),
      h('p', { class: 'hint' }, 'Other flags that must pass first; when one does not, this flag serves nothing (SDKs fall back to their code default).'),
      rows.length ? h('ul', { class: 'plain-list' }, rows) : null,
      otherKeys.filter((k) => k !== doc.key).length
        ? button('Add prerequisite', {
          onclick: () => { draft.prerequisites.push({ id: '', condition: { value: true } }); changed(); rerender('.prereq:last-child select'); },
        })
        : h('p', { class: 'muted' }, 'No other flags in this project yet.'));
  };

  const ruleCard = (env, rules, rule, i) => {
    const at = `environments.${env}.rules[${i}]`;
    const titleId = uid('rule');
    const vt = draft.value_type;
    const move = (delta) => {
      const j = i + delta;
      [rules[i], rules[j]] = [rules[j], rules[i]];
      changed();
      rerender(`[data-rule="${j}"] .rule-move-${delta < 0 ? 'up' : 'down'}`);
    };
    const typeSel = select(RULE_TYPES, rule.type, {
      onchange: (e) => {
        const next = newRule(e.target.value, vt, rule);
        carryConditionState(rule, next);
        rules[i] = next;
        changed();
        rerender(`[data-rule="${i}"] select`);
      },
    });
    const specific = [];
    if (rule.type === 'force' || rule.type === 'rollout') {
      specific.push(field({
        label: 'Value served',
        name: `${at}.value`,
        control: valueControl(vt, rule.value, (v, p) => { problem(`${at}.value`, p); if (!p) rule.value = v; changed(); }),
      }));
    }
    const coverageControls = (hint) => {
      const pct = Math.round((rule.coverage ?? 1) * 10000) / 100;
      const out = h('output', { class: 'coverage-out' }, `${pct}%`);
      const number = input({
        type: 'number', min: '0', max: '100', step: 'any', value: String(pct), inputmode: 'decimal',
        class: 'input input-narrow',
      });
      const slider = h('input', {
        type: 'range', min: '0', max: '100', step: '1', value: String(pct), class: 'slider',
        'aria-label': 'Coverage slider', 'aria-valuetext': `${pct}%`,
      });
      const set = (v, from) => {
        const n = Number(v);
        if (!Number.isFinite(n) || n < 0 || n > 100) {
          problem(`${at}.coverage`, 'Coverage is a percentage from 0 to 100.');
          return;
        }
        problem(`${at}.coverage`, null);
        rule.coverage = Math.round(n * 100) / 10000;
        out.textContent = `${n}%`;
        slider.setAttribute('aria-valuetext', `${n}%`);
        if (from !== slider) slider.value = String(n);
        if (from !== number) number.value = String(n);
        changed();
      };
      slider.addEventListener('input', () => set(slider.value, slider));
      number.addEventListener('input', () => set(number.value, number));
      return h('div', { class: 'coverage' },
        field({ label: 'Coverage (% of matching users)', control: number, name: `${at}.coverage`, hint }),
        h('div', { class: 'coverage-slider' }, slider, out));
    };
    const hashField = () => field({
      label: 'Bucket by attribute',
      name: `${at}.hash_attribute`,
      control: input({ value: rule.hash_attribute || 'id', spellcheck: 'false', oninput: (e) => { rule.hash_attribute = e.target.value.trim(); changed(); } }),
      hint: 'The same value always lands in the same bucket (usually the user id).',
    });
    if (rule.type === 'rollout') {
      specific.push(h('div', { class: 'grid-2' }, coverageControls('Users keep their answer as the percentage grows.'), hashField()));
    }
    if (rule.type === 'experiment') {
      rule.variations = rule.variations || [];
      if (!Array.isArray(rule.weights) || rule.weights.length !== rule.variations.length) {
        rule.weights = rule.variations.map(() => 1 / (rule.variations.length || 1));
      }
      const sum = rule.weights.reduce((a, b) => a + b, 0);
      const sumText = h('p', { class: Math.abs(sum - 1) > 1e-6 ? 'field-error' : 'hint', role: 'status' },
        `Weights add up to ${percent(sum)}${Math.abs(sum - 1) > 1e-6 ? ': they must total 100%.' : '.'}`);
      const labels = rule.variations.map((_, j) => `Variation ${j}`);
      const barBox = h('div', weightsBar(rule.weights, labels));
      const refreshWeights = () => {
        const total = rule.weights.reduce((a, b) => a + b, 0);
        sumText.textContent = `Weights add up to ${percent(total)}${Math.abs(total - 1) > 1e-6 ? ': they must total 100%.' : '.'}`;
        sumText.className = Math.abs(total - 1) > 1e-6 ? 'field-error' : 'hint';
        mount(barBox, weightsBar(rule.weights, labels));
      };
      const rows = rule.variations.map((v, j) => h('tr',
        h('th', { scope: 'row' }, `Variation ${j}`, j === 0 ? h('span', { class: 'muted small' }, ' (control)') : null),
        h('td', valueControl(vt, v, (nv, p) => {
          problem(`${at}.variations[${j}]`, p);
          if (!p) rule.variations[j] = nv;
          changed();
        }, { 'aria-label': `Value of variation ${j}`, 'data-field': `${at}.variations[${j}]` })),
        h('td', input({
          type: 'number', min: '0', max: '100', step: 'any', class: 'input input-narrow', 'aria-label': `Weight of variation ${j} (%)`,
          value: String(Math.round(rule.weights[j] * 10000) / 100),
          oninput: (e) => {
            const n = Number(e.target.value);
            if (Number.isFinite(n)) rule.weights[j] = n / 100;
            refreshWeights();
            changed();
          },
        })),
        h('td', rule.variations.length > 2 ? button('Remove', {
          kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove variation ${j}`,
          onclick: () => {
            rule.variations.splice(j, 1);
            rule.weights = rule.variations.map(() => 1 / rule.variations.length);
            changed();
            rerender(`[data-rule="${i}"] .add-variation`);
          },
        }) : null)));
      specific.push(h('fieldset', { class: 'variations', 'data-field': `${at}.variations`, tabindex: '-1' },
        h('legend', 'Variations and weights'),
        h('table', { class: 'table table-compact', 'data-field': `${at}.weights`, tabindex: '-1' },
          h('thead', h('tr', h('th', { scope: 'col' }, 'Variation'), h('th', { scope: 'col' }, 'Value'), h('th', { scope: 'col' }, 'Weight (%)'),
            h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
          h('tbody', rows)),
        barBox,
        sumText,
        h('div', { class: 'actions actions-left' },
          button('Add variation', {
            class: 'btn btn-secondary btn-small add-variation',
            onclick: () => {
              rule.variations.push(rule.variations[rule.variations.length - 1] ?? null);
              rule.weights = rule.variations.map(() => 1 / rule.variations.length);
              changed();
              rerender(`[data-rule="${i}"] .add-variation`);
            },
          }),
          button('Split evenly', {
            class: 'btn btn-secondary btn-small',
            onclick: () => {
              rule.weights = rule.variations.map(() => 1 / rule.variations.length);
              changed();
              rerender(`[data-rule="${i}"] .add-variation`);
            },
          }))));
      specific.push(h('div', { class: 'grid-3' },
        coverageControls('Share of matching users who enter the experiment.'),
        hashField(),
        field({
          label: 'Tracking key',
          name: `${at}.tracking_key`,
          control: input({
            value: rule.tracking_key || '', placeholder: doc.key, spellcheck: 'false',
            oninput: (e) => { const t = e.target.value.trim(); if (t) rule.tracking_key = t; else delete rule.tracking_key; changed(); },
          }),
          hint: 'Reported with exposures; defaults to the flag key.',
        })));
    }
    return h('li', { class: 'rule card', 'aria-labelledby': titleId, 'data-rule': String(i) },
      h('div', { class: 'rule-head' },
        h('h3', { id: titleId }, ruleTitle(i, rule), rule.enabled === false ? ' (disabled)' : ''),
        h('div', { class: 'actions' },
          button('Move up', { class: 'btn btn-ghost btn-small rule-move-up', disabled: i === 0, 'aria-label': `Move up rule ${i + 1}`, onclick: () => move(-1) }),
          button('Move down', { class: 'btn btn-ghost btn-small rule-move-down', disabled: i === rules.length - 1, 'aria-label': `Move down rule ${i + 1}`, onclick: () => move(1) }),
          button('Remove', {
            class: 'btn btn-ghost btn-small btn-danger-text', 'aria-label': `Remove rule ${i + 1}`,
            onclick: () => { rules.splice(i, 1); changed(); rerender('.add-rule'); },
          }))),
      h('div', { class: 'grid-3' },
        field({ label: 'Rule type', control: typeSel, name: `${at}.type` }),
        field({
          label: 'Description',
          name: `${at}.description`,
          control: input({ value: rule.description || '', oninput: (e) => { rule.description = e.target.value; changed(); } }),
        }),
        h('div', { class: 'field field-switch' }, toggle({
          label: 'Rule enabled', checked: rule.enabled !== false, name: `${at}.enabled`,
          onChange: (on) => { rule.enabled = on; changed(); },
        }))),
      conditionBuilder({ owner: rule, field: `${at}.condition`, label: 'Users who match', onProblem: (p) => { problem(`${at}.condition`, p); changed(); } }),
      (rule.saved_groups || []).length
        ? h('p', { class: 'hint' }, `Also limited to saved groups: ${rule.saved_groups.map((g) => `${g.match || 'all'} of ${g.ids.join(', ')}`).join('; ')} (kept as is).`)
        : null,
      specific);
  };

  const environmentSection = () => {
    draft.environments = draft.environments || {};
    const settings = draft.environments[currentEnv] || { enabled: false, rules: [] };
    const ensure = () => {
      if (!draft.environments[currentEnv]) draft.environments[currentEnv] = settings;
    };
    settings.rules = settings.rules || [];
    const picker = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Environment to edit' },
      envs.map((e) => {
        const on = Boolean(draft.environments[e.key]?.enabled);
        return h('button', {
          type: 'button',
          class: 'segment',
          'aria-pressed': e.key === currentEnv ? 'true' : 'false',
          onclick: () => { currentEnv = e.key; rerender('.segment[aria-pressed="true"]'); },
        }, e.key, h('span', { class: `dot ${on ? 'dot-on' : 'dot-off'}`, 'aria-hidden': 'true' }), h('span', { class: 'visually-hidden' }, on ? ' (on)' : ' (off)'));
      }));
    return h('section', { class: 'card', 'aria-labelledby': 'ed-env' },
      h('h2', { id: 'ed-env' }, `Rules in ${currentEnv}`),
      picker,
      h('div', { class: 'env-toggle' }, toggle({
        label: `Serve this flag in ${currentEnv}`,
        id: 'env-switch',
        checked: settings.enabled,
        name: `environments.${currentEnv}.enabled`,
        onChange: (on) => { ensure(); settings.enabled = on; changed(); rerender('#env-switch'); },
      })),
      h('p', { class: 'hint' }, settings.enabled
        ? 'Rules run top to bottom; the first that matches serves its value. Nobody matched: the default value.'
        : 'Off: SDKs in this environment do not see the flag and use their code default.'),
      settings.rules.length
        ? h('ol', { class: 'rules' }, settings.rules.map((r, i) => ruleCard(currentEnv, settings.rules, r, i)))
        : h('p', { class: 'empty-inline' }, 'No rules: everyone gets the default value when the flag is on.'),
      h('div', { class: 'actions actions-left' },
        button('Add rule', {
          class: 'btn btn-secondary add-rule',
          onclick: () => {
            ensure();
            settings.rules.push(newRule('force', draft.value_type));
            changed();
            rerender(`[data-rule="${settings.rules.length - 1}"] select`);
          },
        })));
  };

  const form = h('form', { class: 'editor', novalidate: true, onsubmit: (e) => { e.preventDefault(); save(); } });

  const reload = async () => {
    const fresh = await get(projectPath(app.project.id, `/features/${encodeURIComponent(doc.key)}`));
    doc = fresh;
    draft = clone(definitionOf(doc));
    problems.clear();
    onSaved(doc);
    rerender('h2');
    toast(`Reloaded version ${doc.version}.`, 'info');
  };

  async function save() {
    clearErrors(form);
    if (problems.size) {
      showErrors(form, { status: 400, errors: [...problems].map(([f, message]) => ({ field: f, message })) });
      return;
    }
    const btn = form.querySelector('button[type="submit"]');
    btn.disabled = true;
    btn.textContent = 'Saving…';
    try {
      const saved = await put(projectPath(app.project.id, `/features/${encodeURIComponent(doc.key)}`), { version: doc.version, ...draft });
      doc = saved;
      draft = clone(definitionOf(saved));
      onSaved(saved);
      rerender();
      toast(`Saved: version ${saved.version}.`);
    } catch (err) {
      if (err.status === 409) {
        showErrors(form, err);
        const summary = form.querySelector('.form-summary');
        mount(summary,
          h('p', { role: 'alert', 'data-conflict': '' },
            'Someone else changed this flag while you were editing it. ', err.message,
            ' Reload to see their version; your unsaved edits here will be lost.'),
          button('Reload the flag', { kind: 'primary', onclick: () => reload().catch((e) => showErrors(form, e)) }));
        summary.focus();
      } else {
        showErrors(form, err, { title: 'The flag was not saved: please correct the highlighted fields.' });
      }
    } finally {
      btn.disabled = false;
      btn.textContent = 'Save changes';
    }
  }

  function rerender(focusSelector) {
    mount(form,
      formSummary(),
      settingsSection(),
      prerequisitesSection(),
      environmentSection(),
      h('div', { class: 'savebar' },
        button('Save changes', { type: 'submit', kind: 'primary' }),
        button('Discard changes', {
          onclick: () => { draft = clone(definitionOf(doc)); problems.clear(); rerender(); toast('Changes discarded.', 'info'); },
        }),
        status));
    changed();
    if (focusSelector) {
      const target = form.querySelector(focusSelector);
      if (target) target.focus();
    }
  }

  rerender();
  mount(root, form, archiveBox());

  function archiveBox() {
    return h('section', { class: 'card danger-zone', 'aria-labelledby': 'ed-archive' },
      h('h2', { id: 'ed-archive' }, doc.archived ? 'Archived' : 'Archive'),
      h('p', doc.archived ? 'This flag is archived: it is served nowhere. Restore it to serve it again.'
        : 'Archiving stops serving the flag everywhere (SDKs then use their code default). The history stays.'),
      button(doc.archived ? 'Restore flag' : 'Archive flag', {
        kind: doc.archived ? 'secondary' : 'danger',
        onclick: async () => {
          const ok = await confirmDialog({
            title: doc.archived ? `Restore ${doc.key}?` : `Archive ${doc.key}?`,
            text: doc.archived ? 'It is served again by the environments where it is on.' : 'SDKs stop seeing it at once.',
            confirm: doc.archived ? 'Restore' : 'Archive',
            danger: !doc.archived,
          });
          if (!ok) return;
          try {
            const saved = await put(projectPath(app.project.id, `/features/${encodeURIComponent(doc.key)}`),
              { version: doc.version, ...definitionOf(doc), archived: !doc.archived });
            doc = saved;
            draft = clone(definitionOf(saved));
            onSaved(saved);
            rerender();
            mount(root, form, archiveBox());
            toast(saved.archived ? 'Flag archived.' : 'Flag restored.');
          } catch (err) {
            showErrors(form, err);
          }
        },
      }));
  }
  return root;
}
