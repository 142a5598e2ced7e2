// "Test this user": evaluates the flag for a set of attributes on the server (the same compiled flags SDKs get) and
// explains the answer: the value, which rule served it and why, and what the rules before it did.
import { post, projectPath } from '../api.js';
import { h, mount, uid } from '../dom.js';
import { app } from '../shell.js';
import { button, field, formSummary, input, select, submitting } from '../ui.js';
import { conditionAttributes, describeCondition, describeRule, literalText, parseLiteral, percent } from './model.js';

function explain(doc, env, result) {
  const settings = (doc.environments || {})[env] || { enabled: false, rules: [] };
  const rules = settings.rules || [];
  const index = rules.findIndex((r) => r.id === result.rule_id);
  const rule = index >= 0 ? rules[index] : null;
  const ex = result.experiment;
  switch (result.source) {
    case 'unknownFeature':
      return doc.archived
        ? 'The flag is archived, so it is served nowhere: SDKs use their code default.'
        : `The flag is off in ${env}, so SDKs there do not see it and use their code default.`;
    case 'defaultValue':
      return rules.length
        ? 'No rule served this user (each condition was false, the user was outside its percentage, or the rule is disabled): the default value applies.'
        : 'The flag has no rules here: everyone gets the default value.';
    case 'prerequisite':
      return `A prerequisite did not pass (${(doc.prerequisites || []).map((p) => `${p.id} where ${describeCondition(p.condition)}`).join('; ')}), so the flag serves nothing.`;
    case 'cyclicPrerequisite':
      return 'The prerequisites form a cycle, so the flag cannot be evaluated.';
    case 'force':
      if (rule && rule.type === 'rollout') {
        return `The user matched ${rule.condition ? `the condition (${describeCondition(rule.condition)})` : 'the rule (it has no condition)'} and their bucket, hashed from ${rule.hash_attribute || 'id'}, falls inside the ${percent(rule.coverage)} rollout.`;
      }
      return rule && rule.condition
        ? `The user matched the rule's condition: ${describeCondition(rule.condition)}.`
        : 'The rule has no condition: it serves everyone who reaches it.';
    case 'experiment':
      if (ex) {
        const hashed = `${ex.hash_attribute} = ${JSON.stringify(ex.hash_value)}`;
        return ex.in_experiment
          ? `In experiment ${ex.key}: ${hashed} hashes to bucket ${Number(ex.bucket).toFixed(4)}, which falls in variation ${ex.variation_id}.`
          : `Not in experiment ${ex.key} (${hashed} is outside its coverage): the experiment's first variation is served.`;
      }
      return 'Served by the experiment rule.';
    default:
      return `Source: ${result.source}.`;
  }
}

function attributeRows(rows, container) {
  const render = (focusIndex) => {
    mount(container, h('ul', { class: 'plain-list attr-rows' }, rows.map((row, i) => h('li', { class: 'attr-row' },
      field({ label: `Attribute ${i + 1} name`, control: input({ value: row.name, spellcheck: 'false', autocomplete: 'off', oninput: (e) => { row.name = e.target.value; } }) }),
      field({ label: `Attribute ${i + 1} value`, control: input({ value: row.value, spellcheck: 'false', autocomplete: 'off', oninput: (e) => { row.value = e.target.value; } }) }),
      button('Remove', {
        kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove attribute ${i + 1}`,
        onclick: () => { rows.splice(i, 1); render(Math.max(0, i - 1)); },
      })))),
    button('Add attribute', { class: 'btn btn-secondary btn-small', onclick: () => { rows.push({ name: '', value: '' }); render(rows.length - 1); } }));
    if (focusIndex !== undefined) {
      const target = container.querySelectorAll('.attr-row input')[focusIndex * 2];
      if (target) target.focus();
    }
  };
  render();
}

export function evaluator(doc, envs) {
  const envKeys = envs.map((e) => e.key);
  let env = envKeys.find((k) => (doc.environments || {})[k]?.enabled) || envKeys[0];
  const names = new Set(['id']);
  for (const k of envKeys) for (const r of (doc.environments || {})[k]?.rules || []) conditionAttributes(r.condition, names);
  const rows = [...names].map((name) => ({ name, value: name === 'id' ? 'user-123' : '' }));
  const rowsBox = h('div');
  attributeRows(rows, rowsBox);
  const out = h('div', { class: 'eval-result', 'aria-live': 'polite' });
  const envSel = select(envKeys, env, { name: 'environment', onchange: (e) => { env = e.target.value; } });
  const form = h('form', {
    class: 'form card',
    novalidate: true,
    'aria-labelledby': 'eval-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const attributes = {};
      for (const r of rows) if (r.name.trim()) attributes[r.name.trim()] = parseLiteral(r.value);
      const answer = await submitting(form, () => post(projectPath(app.project.id, '/evaluate'),
        { environment: env, attributes, features: [doc.key], explain: true }), 'Evaluating…');
      if (!answer) return;
      const result = answer.results[doc.key];
      const settings = (doc.environments || {})[env] || { rules: [] };
      const rules = settings.rules || [];
      const matched = rules.findIndex((r) => r.id === result.rule_id);
      // What the server says each rule it tried did, by rule id (disabled rules are not compiled, so not tried).
      const traced = new Map((result.rules || []).map((t) => [t.id, t]));
      const titleId = uid('res');
      mount(out, h('section', { class: 'card result', 'aria-labelledby': titleId, 'data-source': result.source, 'data-rule-id': result.rule_id || '' },
        h('h3', { id: titleId }, 'Result'),
        h('dl', { class: 'facts' },
          h('dt', 'Value'), h('dd', h('code', { 'data-value': '' }, JSON.stringify(result.value))),
          h('dt', 'Served by'), h('dd', { 'data-served-by': '' }, matched >= 0 ? `Rule ${matched + 1} (${rules[matched].type})` : {
            defaultValue: 'The default value', unknownFeature: 'Nothing (flag not served)', prerequisite: 'A failed prerequisite',
          }[result.source] || result.source),
          h('dt', 'Why'), h('dd', { 'data-why': '' }, explain(doc, env, result))),
        rules.length ? h('div',
          h('h4', `Rules in ${env}`),
          h('ol', { class: 'rule-trace' }, rules.map((r, i) => {
            let verdict;
            const step = traced.get(r.id);
            if (i === matched) verdict = 'served this user';
            else if (r.enabled === false) verdict = 'disabled';
            else if (step) verdict = `did not serve: ${step.reason}`;
            else if (matched >= 0 && i > matched) verdict = 'not reached';
            else verdict = 'did not serve (condition false or outside its percentage)';
            const attrs = [...conditionAttributes(r.condition)];
            return h('li', { class: i === matched ? 'trace-hit' : 'trace-miss', 'data-outcome': step ? step.outcome : '' },
              h('strong', `Rule ${i + 1}: ${verdict}. `), describeRule(r),
              attrs.length ? h('span', { class: 'muted' }, ` — this user: ${attrs.map((a) => `${a} = ${a in attributes ? literalText(attributes[a]) : '(not set)'}`).join(', ')}`) : null);
          }))) : null));
      out.querySelector('h3').setAttribute('tabindex', '-1');
    },
  },
  h('h2', { id: 'eval-title' }, 'Test a user'),
  h('p', { class: 'hint' }, 'Evaluate this flag for a user described by attributes, exactly as the server answers SDKs. Nothing is recorded.'),
  formSummary(),
  field({ label: 'Environment', control: envSel, name: 'environment' }),
  h('fieldset', { class: 'attributes', 'data-field': 'attributes', tabindex: '-1' }, h('legend', 'Attributes'),
    h('p', { class: 'hint' }, 'Numbers and true/false are typed; quote text that looks like one, e.g. "42".'), rowsBox),
  h('div', { class: 'actions' }, button('Evaluate', { type: 'submit', kind: 'primary' })));
  return h('div', { class: 'stack' }, form, out);
}
