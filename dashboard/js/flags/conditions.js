// The condition builder: rows of attribute / operator / value that must all hold, or the condition as JSON for what
// rows cannot express ($or, nested conditions…). Its state lives per rule object, so re-rendering keeps half-typed rows.
import { h, mount, uid } from '../dom.js';
import { button, input, select, textarea } from '../ui.js';
import { clausesFromCondition, conditionFromClauses, operator, OPERATORS } from './model.js';

const states = new WeakMap();

function stateOf(owner, condition) {
  let st = states.get(owner);
  if (!st) {
    const clauses = clausesFromCondition(condition);
    st = clauses === null
      ? { mode: 'json', clauses: [], text: JSON.stringify(condition, null, 2) }
      : { mode: 'rows', clauses, text: condition === undefined ? '' : JSON.stringify(condition, null, 2) };
    states.set(owner, st);
  }
  return st;
}

/** Moves the builder state of one rule object to its replacement (a rule whose type changed). */
export function carryConditionState(from, to) {
  const st = states.get(from);
  if (st) states.set(to, st);
}

/**
 * The builder for `owner.condition`. `field` is the API's field path of the condition (errors land here);
 * `onProblem(message|null)` reports what stops it from being saved.
 */
export function conditionBuilder({ owner, field, label = 'Targeting', onProblem }) {
  const st = stateOf(owner, owner.condition);
  const box = h('fieldset', { class: 'condition', 'data-field': field, tabindex: '-1' });
  const legendId = uid('cond');

  const commit = () => {
    if (st.mode === 'json') {
      const t = st.text.trim();
      if (!t) {
        delete owner.condition;
        onProblem(null);
        return;
      }
      try {
        const v = JSON.parse(t);
        if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('a condition is a JSON object');
        owner.condition = v;
        onProblem(null);
      } catch (err) {
        onProblem(`The condition is not valid: ${err.message}`);
      }
      return;
    }
    const { condition, problems } = conditionFromClauses(st.clauses);
    if (condition === undefined) delete owner.condition;
    else owner.condition = condition;
    onProblem(problems.length ? `Condition row ${problems[0].index + 1}: ${problems[0].message}` : null);
  };

  const render = (focusRow) => {
    const rows = st.clauses.map((c, i) => {
      const attr = input({
        value: c.attr, placeholder: 'attribute, e.g. plan', autocomplete: 'off', spellcheck: 'false',
        'aria-label': `Attribute of condition ${i + 1}`,
        oninput: (e) => { c.attr = e.target.value; commit(); },
      });
      const valueInput = input({
        value: c.value, autocomplete: 'off', spellcheck: 'false',
        placeholder: operator(c.op).list ? 'a, b, c' : 'value',
        'aria-label': `Value of condition ${i + 1}`,
        hidden: Boolean(operator(c.op).none),
        oninput: (e) => { c.value = e.target.value; commit(); },
      });
      const op = select(OPERATORS.map((o) => [o.id, o.label]), c.op, {
        'aria-label': `Operator of condition ${i + 1}`,
        onchange: (e) => {
          c.op = e.target.value;
          valueInput.hidden = Boolean(operator(c.op).none);
          valueInput.placeholder = operator(c.op).list ? 'a, b, c' : 'value';
          commit();
        },
      });
      return h('li', { class: 'clause' },
        i > 0 ? h('span', { class: 'clause-and', 'aria-hidden': 'true' }, 'and') : null,
        attr, op, valueInput,
        button('Remove', {
          kind: 'ghost', class: 'btn btn-ghost btn-small', 'aria-label': `Remove condition ${i + 1}`,
          onclick: () => { st.clauses.splice(i, 1); commit(); render(Math.min(i, st.clauses.length - 1)); },
        }));
    });
    const body = st.mode === 'json'
      ? [
        textarea({
          class: 'input textarea mono', rows: '4', spellcheck: 'false', value: st.text, 'aria-label': `${label} as JSON`,
          oninput: (e) => { st.text = e.target.value; commit(); },
        }),
        h('p', { class: 'hint' }, 'A GrowthBook condition, e.g. {"plan": {"$in": ["pro", "team"]}, "$or": [...]}. Empty: everyone.'),
      ]
      : [
        st.clauses.length ? h('ol', { class: 'clauses' }, rows) : h('p', { class: 'muted' }, 'Everyone (no condition).'),
        h('p', { class: 'hint' }, 'Numbers and true/false are typed; put text that looks like one in quotes, e.g. "123".'),
      ];
    const toggleMode = button(st.mode === 'json' ? 'Edit as rows' : 'Edit as JSON', {
      kind: 'ghost',
      class: 'btn btn-ghost btn-small',
      onclick: () => {
        if (st.mode === 'json') {
          const clauses = clausesFromCondition(owner.condition);
          if (clauses === null) {
            onProblem('This condition uses operators the rows cannot show; keep editing it as JSON.');
            return;
          }
          st.mode = 'rows';
          st.clauses = clauses;
        } else {
          st.mode = 'json';
          st.text = owner.condition === undefined ? '' : JSON.stringify(owner.condition, null, 2);
        }
        commit();
        render();
      },
    });
    mount(box,
      h('legend', { id: legendId }, label),
      body,
      h('div', { class: 'actions actions-left' },
        st.mode === 'rows' ? button('Add condition', {
          class: 'btn btn-secondary btn-small',
          onclick: () => { st.clauses.push({ attr: '', op: 'is', value: '' }); commit(); render(st.clauses.length - 1); },
        }) : null,
        toggleMode));
    if (focusRow !== undefined && focusRow >= 0) {
      const target = box.querySelectorAll('.clause input')[focusRow * 2];
      if (target) target.focus();
    }
  };
  // Nothing is committed until edited: the stored condition stays as written.
  render();
  return box;
}
