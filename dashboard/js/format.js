// Formatting of times, values and audit actors.
import { h } from './dom.js';

const UNITS = [['year', 31536000], ['month', 2592000], ['week', 604800], ['day', 86400], ['hour', 3600], ['minute', 60]];
const rtf = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
const dtf = new Intl.DateTimeFormat('en', { dateStyle: 'medium', timeStyle: 'short' });

export function relative(iso) {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const secs = Math.round((t - Date.now()) / 1000);
  for (const [unit, size] of UNITS) {
    if (Math.abs(secs) >= size) return rtf.format(Math.round(secs / size), unit);
  }
  return 'just now';
}

/** A <time> showing a relative time, the exact one on hover and to assistive technology. */
export function time(iso) {
  if (!iso) return '—';
  const t = Date.parse(iso);
  const exact = Number.isNaN(t) ? iso : dtf.format(new Date(t));
  return h('time', { datetime: iso, title: exact }, relative(iso));
}

export function exact(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? String(iso || '—') : dtf.format(new Date(t));
}

/** A JSON value as compact text. */
export function valueText(v) {
  if (v === undefined) return '—';
  if (typeof v === 'string') return JSON.stringify(v);
  return JSON.stringify(v);
}

export function pretty(v) {
  return JSON.stringify(v, null, 2);
}

/** `user:3` → the member's email when known; `personal_key:2` → "API key #2". */
export function actorText(label, members) {
  if (!label) return '—';
  const [kind, id] = label.split(':');
  if (kind === 'user' && members) {
    const m = members.find((x) => String(x.user_id) === id);
    if (m) return m.email;
  }
  if (kind === 'personal_key') return `API key #${id}`;
  if (kind === 'user') return `user #${id}`;
  return label;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
