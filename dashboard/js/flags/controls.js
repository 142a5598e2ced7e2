// Form controls for typed feature values.
import { h, uid } from '../dom.js';
import { input, select, textarea } from '../ui.js';

/**
 * A control for a value of `type` (boolean, number, string, json). `onChange(value, problem)` gets the typed value,
 * or a problem text when the input cannot be one (the form refuses to save until it is fixed).
 */
export function valueControl(type, value, onChange, props = {}) {
  if (type === 'boolean') {
    return select([['true', 'true (on)'], ['false', 'false (off)']], String(value === true), {
      ...props,
      onchange: (e) => onChange(e.target.value === 'true'),
    });
  }
  if (type === 'number') {
    return input({
      ...props,
      type: 'number',
      step: 'any',
      inputmode: 'decimal',
      value: typeof value === 'number' ? String(value) : '',
      oninput: (e) => {
        const t = e.target.value.trim();
        if (t === '' || !Number.isFinite(Number(t))) onChange(undefined, 'Enter a number.');
        else onChange(Number(t));
      },
    });
  }
  if (type === 'json') {
    return textarea({
      ...props,
      rows: '3',
      spellcheck: 'false',
      class: 'input textarea mono',
      value: JSON.stringify(value === undefined ? null : value, null, 2),
      oninput: (e) => {
        try {
          onChange(JSON.parse(e.target.value));
        } catch (err) {
          onChange(undefined, `Not valid JSON: ${err.message}`);
        }
      },
    });
  }
  return input({ ...props, value: typeof value === 'string' ? value : '', oninput: (e) => onChange(e.target.value) });
}

/** A switch (a checkbox with the switch role) with its label. */
export function toggle({ label, checked, onChange, name, disabled, id = uid('sw') }) {
  return h('div', { class: 'switch' },
    h('input', {
      type: 'checkbox', role: 'switch', id, checked: Boolean(checked), disabled: Boolean(disabled), 'data-field': name,
      onchange: (e) => onChange(e.target.checked),
    }),
    h('label', { for: id }, label));
}
