// Small components shared by every page: loading, empty and error states, tables, form fields with the API's field
// errors shown next to them, buttons, dialogs, notices and secrets shown once.
import { h, mount, uid } from './dom.js';

export function loading(label = 'Loading…') {
  return h('p', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), label);
}

/** What a refused request means for the person looking at the page. */
export function errorText(err) {
  if (!err) return 'Something went wrong.';
  if (err.status === 403) {
    const why = err.message ? ` (${err.message})` : '';
    return `Your role cannot do this${why}. Ask an admin of the organization if you need it.`;
  }
  if (err.status === 429 && err.retryAfter) return `${err.message} Try again in ${waitText(err.retryAfter)}.`;
  return err.message || String(err);
}

export function waitText(seconds) {
  if (seconds < 90) return `${seconds} second${seconds === 1 ? '' : 's'}`;
  const minutes = Math.ceil(seconds / 60);
  return `${minutes} minute${minutes === 1 ? '' : 's'}`;
}

export function errorPanel(err, retry) {
  const title = err && err.status === 403 ? 'Not available for your role'
    : err && err.status === 404 ? 'Not found' : 'This could not be loaded';
  return h('div', { class: 'panel panel-error', role: 'alert', 'data-error-code': err && err.code },
    h('h2', { class: 'panel-title' }, title),
    h('p', errorText(err)),
    retry ? button('Try again', { onclick: retry }) : null);
}

export function emptyState(title, text, action) {
  return h('div', { class: 'empty' }, h('p', { class: 'empty-title' }, title), text ? h('p', text) : null, action || null);
}

/**
 * Shows `render(data)` once `load()` resolves, a loading state until then, an error panel with a retry on failure.
 * `box.reload()` runs it again (a search with new terms).
 */
export function section(load, render) {
  const box = h('div', { class: 'section-body', 'aria-busy': 'true' }, loading());
  const run = async () => {
    box.setAttribute('aria-busy', 'true');
    mount(box, loading());
    try {
      const data = await load();
      mount(box, render(data, run));
    } catch (err) {
      mount(box, errorPanel(err, run));
    } finally {
      box.setAttribute('aria-busy', 'false');
    }
  };
  box.ready = run();
  box.reload = () => {
    box.ready = run();
    return box.ready;
  };
  return box;
}

export function button(label, props = {}) {
  const { kind = 'secondary', type = 'button', ...rest } = props;
  return h('button', { type, class: `btn btn-${kind}`, ...rest }, label);
}

export function badge(text, kind = 'neutral') {
  return h('span', { class: `badge badge-${kind}` }, text);
}

/**
 * A table: columns are `{label, render(row) → node|text, class?}`; `empty` is shown instead when there are no rows.
 */
export function table({ caption, columns, rows, empty, rowProps }) {
  if (!rows.length && empty) return empty;
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'table' },
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', h('tr', columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h('tbody', rows.map((row) => h('tr', rowProps ? rowProps(row) : null,
        columns.map((c, i) => (i === 0 && c.header !== false
          ? h('th', { scope: 'row', class: c.class }, c.render(row))
          : h('td', { class: c.class }, c.render(row)))))))));
}

/**
 * A labelled form field. `control` is an input/select/textarea (given an id here); `name` is the API's field path
 * (`data-field`) that errors are matched to; `hint` describes it.
 */
export function field({ label, control, hint, name, inline = false }) {
  const id = control.id || uid('in');
  control.id = id;
  if (name) control.setAttribute('data-field', name);
  const described = [];
  let hintEl = null;
  if (hint) {
    hintEl = h('p', { class: 'hint', id: `${id}-hint` }, hint);
    described.push(hintEl.id);
  }
  if (described.length) control.setAttribute('aria-describedby', described.join(' '));
  const labelEl = h('label', { for: id }, label);
  return h('div', { class: inline ? 'field field-inline' : 'field' },
    inline ? [control, labelEl] : [labelEl, control], hintEl);
}

export function input(props = {}) {
  return h('input', { type: 'text', class: 'input', ...props });
}

export function textarea(props = {}) {
  return h('textarea', { class: 'input textarea', ...props });
}

/** `options`: [[value, label]] or [value]. */
export function select(options, value, props = {}) {
  return h('select', { class: 'input select', ...props },
    options.map((o) => {
      const [v, l] = Array.isArray(o) ? o : [o, o];
      return h('option', { value: v, selected: String(v) === String(value) }, l);
    }));
}

/** The form's summary area for errors that name no field on the form (and the overall message). */
export function formSummary() {
  return h('div', { class: 'form-summary', tabindex: '-1', hidden: true });
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error')) el.remove();
  for (const el of form.querySelectorAll('[aria-invalid="true"]')) {
    el.removeAttribute('aria-invalid');
    const ids = (el.getAttribute('aria-describedby') || '').split(' ').filter((i) => i && !i.endsWith('-err'));
    if (ids.length) el.setAttribute('aria-describedby', ids.join(' '));
    else el.removeAttribute('aria-describedby');
  }
  const summary = form.querySelector('.form-summary');
  if (summary) {
    summary.hidden = true;
    summary.replaceChildren();
  }
}

function controlFor(form, path) {
  let p = path;
  while (p) {
    const el = form.querySelector(`[data-field="${CSS.escape(p)}"]`);
    if (el) return el;
    const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
    if (cut <= 0) break;
    p = p.slice(0, cut);
  }
  return null;
}

/**
 * Shows an API error on a form: each `errors[]` item next to the control whose `data-field` names it (or its closest
 * parent path), the rest and the message in the summary. Focuses the first problem.
 */
export function showErrors(form, err, { title } = {}) {
  clearErrors(form);
  const unmatched = [];
  let first = null;
  for (const e of err.errors || []) {
    const control = controlFor(form, e.field);
    if (!control) {
      unmatched.push(e);
      continue;
    }
    const errId = `${control.id || (control.id = uid('in'))}-err`;
    let msg = document.getElementById(errId);
    const text = control.getAttribute('data-field') === e.field ? e.message : `${e.field}: ${e.message}`;
    if (msg) {
      msg.append(h('br'), text);
    } else {
      msg = h('p', { class: 'field-error', id: errId }, text);
      const host = control.closest('.field') || control.parentElement;
      host.append(msg);
    }
    control.setAttribute('aria-invalid', 'true');
    const ids = new Set((control.getAttribute('aria-describedby') || '').split(' ').filter(Boolean));
    ids.add(errId);
    control.setAttribute('aria-describedby', [...ids].join(' '));
    if (!first) first = control;
  }
  const summary = form.querySelector('.form-summary');
  const message = err.errors && err.errors.length && err.status === 400
    ? (title || 'Please correct the highlighted fields.')
    : errorText(err);
  if (summary) {
    summary.hidden = false;
    mount(summary, h('p', { role: 'alert' }, message),
      unmatched.length ? h('ul', unmatched.map((e) => h('li', `${e.field}: ${e.message}`))) : null);
  }
  const target = first || summary;
  if (target) target.focus();
}

/**
 * Runs `fn` for a form's submission: its submit button is disabled and says `busyLabel` meanwhile; errors are shown
 * on the form. Resolves to fn's result, or undefined when it failed.
 */
export async function submitting(form, fn, busyLabel = 'Saving…') {
  const btn = form.querySelector('button[type="submit"]');
  const label = btn ? btn.textContent : '';
  if (btn) {
    btn.disabled = true;
    btn.textContent = busyLabel;
  }
  clearErrors(form);
  try {
    return await fn();
  } catch (err) {
    if (err && err.status !== undefined) showErrors(form, err);
    else showErrors(form, { message: String(err && err.message ? err.message : err), errors: [] });
    return undefined;
  } finally {
    if (btn) {
      btn.disabled = false;
      btn.textContent = label;
    }
  }
}

let toastRegion = null;

/** A short message announced politely and shown for a few seconds. */
export function toast(message, kind = 'success') {
  if (!toastRegion || !toastRegion.isConnected) {
    toastRegion = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(toastRegion);
  }
  const t = h('p', { class: `toast toast-${kind}` }, message);
  toastRegion.append(t);
  setTimeout(() => t.remove(), 6000);
}

/** A modal confirmation (native <dialog>: focus stays inside, Escape cancels). Resolves true when confirmed. */
export function confirmDialog({ title, text, confirm = 'Confirm', danger = false }) {
  return new Promise((resolve) => {
    const titleId = uid('dlg');
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId },
      h('form', { method: 'dialog' },
        h('h2', { id: titleId }, title),
        text ? h('p', text) : null,
        h('div', { class: 'actions' },
          button('Cancel', { value: 'cancel', type: 'submit' }),
          button(confirm, { kind: danger ? 'danger' : 'primary', value: 'ok', type: 'submit' }))));
    dlg.addEventListener('close', () => {
      resolve(dlg.returnValue === 'ok');
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** A secret the API shows once (a key, a token, a link), with a copy button. */
export function secretBox({ title, value, note }) {
  const code = h('code', { class: 'secret-value', 'data-secret': '' }, value);
  const copy = button('Copy', {
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(value);
        toast('Copied to the clipboard.');
      } catch {
        const range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        toast('Select and copy it by hand (the clipboard is not available here).', 'info');
      }
    },
  });
  return h('div', { class: 'secret', role: 'region', 'aria-label': title },
    h('p', { class: 'secret-title' }, title),
    h('div', { class: 'secret-row' }, code, copy),
    h('p', { class: 'hint' }, note || 'Shown once: save it now. It is stored hashed and cannot be shown again.'));
}

/** A page header: the h1 (focused after navigation) and optional actions. */
export function pageHeader(title, { subtitle, actions } = {}) {
  return h('div', { class: 'page-header' },
    h('div', h('h1', { tabindex: '-1', class: 'page-title' }, title), subtitle ? h('p', { class: 'subtitle' }, subtitle) : null),
    actions ? h('div', { class: 'actions' }, actions) : null);
}
