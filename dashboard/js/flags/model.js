// Feature documents as the API stores them, and what the forms need: conditions ↔ clauses for the builder,
// literal values, rule defaults and plain-language descriptions.

/** Operators the condition builder offers (GrowthBook condition operators). */
export const OPERATORS = [
  { id: 'is', label: 'is' },
  { id: '$ne', label: 'is not' },
  { id: '$in', label: 'is one of', list: true },
  { id: '$nin', label: 'is not one of', list: true },
  { id: '$gt', label: 'is greater than' },
  { id: '$gte', label: 'is at least' },
  { id: '$lt', label: 'is less than' },
  { id: '$lte', label: 'is at most' },
  { id: '$regex', label: 'matches the pattern', text: true },
  { id: '$vgte', label: 'is version at least', text: true },
  { id: '$vlt', label: 'is version below', text: true },
  { id: '$exists:true', label: 'is set', none: true },
  { id: '$exists:false', label: 'is not set', none: true },
];

const BY_ID = new Map(OPERATORS.map((o) => [o.id, o]));

export function operator(id) {
  return BY_ID.get(id) || OPERATORS[0];
}

const isPrimitive = (v) => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Text typed in a value box → a JSON value: numbers and true/false are typed, `"quoted"` stays text. */
export function parseLiteral(text) {
  const t = String(text).trim();
  if (/^".*"$/.test(t)) {
    try {
      return JSON.parse(t);
    } catch {
      return t.slice(1, -1);
    }
  }
  if (t === 'true') return true;
  if (t === 'false') return false;
  if (/^-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?$/.test(t)) return Number(t);
  return t;
}

/** A JSON value → the text that parses back to it. */
export function literalText(v) {
  if (typeof v === 'string') {
    return parseLiteral(v) === v && v.trim() === v ? v : JSON.stringify(v);
  }
  return JSON.stringify(v);
}

export function parseList(text) {
  return String(text).split(',').map((x) => x.trim()).filter((x) => x !== '').map(parseLiteral);
}

function clauseOf(attr, v) {
  if (attr.startsWith('$')) return null;
  if (isPrimitive(v)) return { attr, op: 'is', value: literalText(v) };
  if (!isObject(v)) return null;
  const keys = Object.keys(v);
  if (keys.length !== 1) return null;
  const [k] = keys;
  const x = v[k];
  if (k === '$eq' && isPrimitive(x)) return { attr, op: 'is', value: literalText(x) };
  if (k === '$exists' && typeof x === 'boolean') return { attr, op: `$exists:${x}`, value: '' };
  const op = BY_ID.get(k);
  if (!op) return null;
  if (op.list) return Array.isArray(x) && x.every(isPrimitive) ? { attr, op: k, value: x.map(literalText).join(', ') } : null;
  if (op.text) return typeof x === 'string' ? { attr, op: k, value: x } : null;
  return isPrimitive(x) ? { attr, op: k, value: literalText(x) } : null;
}

/** A condition → builder clauses `[{attr, op, value}]` (all must hold), or null when the builder cannot show it. */
export function clausesFromCondition(cond) {
  if (cond === undefined || cond === null) return [];
  if (!isObject(cond)) return null;
  const entries = Object.entries(cond);
  if (entries.length === 1 && entries[0][0] === '$and' && Array.isArray(entries[0][1])) {
    const out = [];
    for (const part of entries[0][1]) {
      if (!isObject(part) || Object.keys(part).length !== 1) return null;
      const [[a, v]] = Object.entries(part);
      const c = clauseOf(a, v);
      if (!c) return null;
      out.push(c);
    }
    return out;
  }
  const out = [];
  for (const [a, v] of entries) {
    const c = clauseOf(a, v);
    if (!c) return null;
    out.push(c);
  }
  return out;
}

function clauseValue(c) {
  const op = operator(c.op);
  if (op.none) return { $exists: c.op === '$exists:true' };
  if (op.list) return { [c.op]: parseList(c.value) };
  if (op.text) return { [c.op]: String(c.value) };
  const v = parseLiteral(c.value);
  return c.op === 'is' ? v : { [c.op]: v };
}

/**
 * Builder clauses → `{condition, problems}`: the condition (undefined: everyone) and what is missing, as
 * `[{index, part, message}]`.
 */
export function conditionFromClauses(clauses) {
  const problems = [];
  clauses.forEach((c, index) => {
    if (!c.attr.trim()) problems.push({ index, part: 'attr', message: 'Name the attribute.' });
    else if (c.attr.trim().startsWith('$')) problems.push({ index, part: 'attr', message: 'Attribute names cannot start with $.' });
    const op = operator(c.op);
    if (!op.none && String(c.value).trim() === '') problems.push({ index, part: 'value', message: 'Enter a value.' });
  });
  if (!clauses.length) return { condition: undefined, problems };
  const attrs = clauses.map((c) => c.attr.trim());
  const repeated = new Set(attrs).size !== attrs.length;
  if (repeated) {
    return { condition: { $and: clauses.map((c) => ({ [c.attr.trim()]: clauseValue(c) })) }, problems };
  }
  const condition = {};
  for (const c of clauses) condition[c.attr.trim()] = clauseValue(c);
  return { condition, problems };
}

/** A condition in words: `plan is pro and age is at least 18`. */
export function describeCondition(cond) {
  const clauses = clausesFromCondition(cond);
  if (clauses === null) return JSON.stringify(cond);
  if (!clauses.length) return 'everyone';
  return clauses.map((c) => {
    const op = operator(c.op);
    return op.none ? `${c.attr} ${op.label}` : `${c.attr} ${op.label} ${op.list ? `[${c.value}]` : c.value}`;
  }).join(' and ');
}

/** The attribute names a condition reads (for showing a tested user's values next to a rule). */
export function conditionAttributes(cond, out = new Set()) {
  if (Array.isArray(cond)) cond.forEach((c) => conditionAttributes(c, out));
  else if (isObject(cond)) {
    for (const [k, v] of Object.entries(cond)) {
      if (k.startsWith('$')) conditionAttributes(v, out);
      else out.add(k);
    }
  }
  return out;
}

export const VALUE_TYPES = ['boolean', 'string', 'number', 'json'];

export function defaultValueFor(type) {
  return { boolean: false, string: '', number: 0, json: {} }[type];
}

function servedValueFor(type) {
  return { boolean: true, string: 'on', number: 1, json: {} }[type];
}

function variationsFor(type) {
  return {
    boolean: [false, true], string: ['control', 'treatment'], number: [0, 1], json: [{}, { variant: 'b' }],
  }[type];
}

export const RULE_TYPES = [
  ['force', 'Force a value'],
  ['rollout', 'Percentage rollout'],
  ['experiment', 'Experiment (A/B/n)'],
];

/** A new rule of `type` for a feature of `valueType`; `from` keeps its id, description, condition and audiences. */
export function newRule(type, valueType, from = {}) {
  const keep = {};
  for (const k of ['id', 'description', 'condition', 'saved_groups', 'enabled']) {
    if (from[k] !== undefined) keep[k] = from[k];
  }
  const value = from.value !== undefined ? from.value : servedValueFor(valueType);
  const base = { type, description: '', enabled: true, ...keep };
  if (type === 'force') return { ...base, value };
  if (type === 'rollout') return { ...base, value, coverage: from.coverage ?? 0.5, hash_attribute: from.hash_attribute || 'id' };
  const variations = from.variations || variationsFor(valueType);
  return {
    ...base,
    variations,
    weights: variations.map(() => 1 / variations.length),
    coverage: from.coverage ?? 1,
    hash_attribute: from.hash_attribute || 'id',
  };
}

export function percent(fraction) {
  return `${Math.round(Number(fraction) * 10000) / 100}%`;
}

/** A rule in words. */
export function describeRule(rule) {
  const who = rule.condition ? `users where ${describeCondition(rule.condition)}` : 'everyone';
  const groups = (rule.saved_groups || []).map((g) => ` (${g.match || 'all'} of saved groups ${g.ids.join(', ')})`).join('');
  if (rule.type === 'force') return `Serve ${JSON.stringify(rule.value)} to ${who}${groups}`;
  if (rule.type === 'rollout') {
    return `Serve ${JSON.stringify(rule.value)} to ${percent(rule.coverage)} of ${who}${groups}, bucketed by ${rule.hash_attribute || 'id'}`;
  }
  const n = (rule.variations || []).length;
  const weights = rule.weights || (rule.variations || []).map(() => 1 / n);
  const arms = (rule.variations || []).map((v, i) => `${JSON.stringify(v)} ${percent(weights[i])}`).join(', ');
  return `Experiment ${rule.tracking_key || ''} on ${percent(rule.coverage ?? 1)} of ${who}${groups}: ${arms}`.replace('  ', ' ');
}

export function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

/** What a feature's environment shows in lists: on/off per environment. */
export function environmentStates(feature, environments) {
  return environments.map((e) => ({
    key: e.key,
    enabled: Boolean(feature.environments && feature.environments[e.key] && feature.environments[e.key].enabled),
    rules: (feature.environments && feature.environments[e.key] && feature.environments[e.key].rules || []).length,
  }));
}
